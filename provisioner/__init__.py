"""vast-pod-provisioner: rent a Vast.ai GPU for a Kubernetes pod and proxy to it."""
