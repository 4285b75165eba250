"""The offer fields of the search-query language: names, aliases, units and types (pure data).

Copied from the official ``vastai`` 1.9.1 CLI (``vastai/api/query.py``: ``offers_fields``,
``offers_alias``, ``offers_mult``; the types from the field table of ``vastai search offers
--help``), so that :mod:`provisioner.vast.query` can parse and check a query without it.
"""

from __future__ import annotations

# ``offers_fields`` of vastai 1.9.1.
OFFER_FIELDS = frozenset(
    [
        "bw_nvlink",
        "cluster_id",
        "compute_cap",
        "cpu_arch",
        "cpu_cores",
        "cpu_cores_effective",
        "cpu_ghz",
        "cpu_ram",
        "cuda_max_good",
        "datacenter",
        "direct_port_count",
        "disk_bw",
        "disk_space",
        "dlperf",
        "dlperf_per_dphtotal",
        "dph_total",
        "driver_version",
        "duration",
        "external",
        "flops_per_dphtotal",
        "geolocation",
        "gpu_arch",
        "gpu_display_active",
        "gpu_frac",
        "gpu_max_power",
        "gpu_max_temp",
        "gpu_mem_bw",
        "gpu_name",
        "gpu_ram",
        "gpu_total_ram",
        "has_avx",
        "host_id",
        "id",
        "inet_down",
        "inet_down_cost",
        "inet_up",
        "inet_up_cost",
        "machine_id",
        "min_bid",
        "mobo_name",
        "num_gpus",
        "pci_gen",
        "pcie_bw",
        "reliability",
        "rentable",
        "rented",
        "static_ip",
        "storage_cost",
        "total_flops",
        "ubuntu_version",
        "verification",
        "verified",
        "vms_enabled",
    ]
)
# Fields the official parser warns about but which Vast documents (and SkyPilot sends).
EXTRA_FIELDS = frozenset({"hosting_type", "os_version", "reliability2"})
ALIASES: dict[str, str] = {
    "cuda_vers": "cuda_max_good",
    "display_active": "gpu_display_active",
    "dlperf_usd": "dlperf_per_dphtotal",
    "dph": "dph_total",
    "flops_usd": "flops_per_dphtotal",
}
# Values are given in GB and days; the API wants MB and seconds.
MULTIPLIERS: dict[str, float] = {
    "cpu_ram": 1000,
    "gpu_ram": 1000,
    "gpu_total_ram": 1000,
    "duration": 24.0 * 60.0 * 60.0,
}
# Field types from the official field table (``vastai search offers --help``), by canonical name;
# fields it lists as strings, and fields it does not list, take any value.
INT_FIELDS = frozenset(["compute_cap", "cpu_cores", "direct_port_count", "id", "machine_id", "num_gpus"])
BOOL_FIELDS = frozenset(
    [
        "datacenter",
        "external",
        "gpu_display_active",
        "has_avx",
        "rentable",
        "static_ip",
        "verified",
        "vms_enabled",
    ]
)
FLOAT_FIELDS = frozenset(
    [
        "bw_nvlink",
        "cpu_cores_effective",
        "cpu_ghz",
        "cpu_ram",
        "cuda_max_good",
        "disk_bw",
        "disk_space",
        "dlperf",
        "dlperf_per_dphtotal",
        "dph_total",
        "duration",
        "flops_per_dphtotal",
        "gpu_frac",
        "gpu_max_power",
        "gpu_max_temp",
        "gpu_mem_bw",
        "gpu_ram",
        "gpu_total_ram",
        "inet_down",
        "inet_down_cost",
        "inet_up",
        "inet_up_cost",
        "min_bid",
        "pci_gen",
        "pcie_bw",
        "reliability",
        "storage_cost",
        "total_flops",
    ]
)
