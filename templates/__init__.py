"""The jinja2 templates (``nginx.conf.j2``); shipped in the wheel as ``provisioner.templates``."""
