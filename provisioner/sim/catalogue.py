"""The seeded marketplace: realistic GPU offers with the fields of docs/vast-api.md §5.3, and their pricing.

Hosts own several machines (one offer each); the first machines cycle through every GPU model as a clean,
verified, rentable single-GPU offer so that tests can rely on each model being rentable. Prices: `dph_base`
is the GPU price, `dph_total = dph_base + allocated_storage * storage_cost / 30 / 24` (gpuhunt's formula),
`min_bid` is the interruptible floor, always below `dph_total`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from provisioner.sim import filters

HOURS_PER_MONTH = 30 * 24
DEFAULT_STORAGE_GB = 5.0


@dataclass(frozen=True)
class GpuModel:
    """One GPU model as the marketplace lists it."""

    name: str
    ram_mb: int
    compute_cap: int
    tflops: float
    mem_bw: float
    max_power: int
    price_lo: float
    price_hi: float
    counts: tuple[int, ...]
    weight: int
    datacenter: bool = False


GPU_MODELS: tuple[GpuModel, ...] = (
    GpuModel("RTX 3060", 12288, 860, 12.7, 360.0, 170, 0.05, 0.12, (1, 1, 2, 4), 8),
    GpuModel("RTX 3070", 8192, 860, 20.3, 448.0, 220, 0.06, 0.13, (1, 1, 2), 4),
    GpuModel("RTX 3080", 10240, 860, 29.8, 760.0, 320, 0.08, 0.18, (1, 1, 2, 4), 5),
    GpuModel("RTX 3090", 24576, 860, 35.6, 936.0, 350, 0.15, 0.30, (1, 1, 2, 4, 8), 10),
    GpuModel("RTX 4070", 12282, 890, 29.1, 504.0, 200, 0.09, 0.17, (1, 1, 2), 4),
    GpuModel("RTX 4080", 16376, 890, 48.7, 717.0, 320, 0.15, 0.28, (1, 1, 2, 4), 5),
    GpuModel("RTX 4090", 24564, 890, 82.6, 1008.0, 450, 0.28, 0.60, (1, 1, 1, 2, 4, 8), 20),
    GpuModel("RTX 5090", 32607, 1200, 104.8, 1792.0, 575, 0.45, 0.90, (1, 1, 2, 4), 6),
    GpuModel("RTX A4000", 16376, 860, 19.2, 448.0, 140, 0.10, 0.20, (1, 2, 4), 3),
    GpuModel("RTX A5000", 24564, 860, 27.8, 768.0, 230, 0.16, 0.32, (1, 2, 4), 4),
    GpuModel("RTX A6000", 49140, 860, 38.7, 768.0, 300, 0.40, 0.80, (1, 2, 4, 8), 6, True),
    GpuModel("A40", 46068, 860, 37.4, 696.0, 300, 0.35, 0.65, (1, 2, 4, 8), 3, True),
    GpuModel("L40S", 46068, 890, 91.6, 864.0, 350, 0.55, 1.00, (1, 2, 4, 8), 4, True),
    GpuModel("A100 PCIE", 40960, 800, 19.5, 1555.0, 250, 0.60, 1.10, (1, 2, 4, 8), 4, True),
    GpuModel("A100 SXM4", 81920, 800, 19.5, 2039.0, 400, 0.90, 1.80, (1, 2, 4, 8), 5, True),
    GpuModel("H100 PCIE", 81559, 900, 51.2, 2039.0, 350, 1.60, 2.60, (1, 2, 4, 8), 3, True),
    GpuModel("H100 SXM", 81559, 900, 66.9, 3352.0, 700, 1.90, 3.20, (1, 2, 4, 8), 6, True),
    GpuModel("Tesla V100", 16384, 700, 15.7, 900.0, 300, 0.12, 0.30, (1, 2, 4, 8), 4, True),
    GpuModel("Tesla T4", 15360, 750, 8.1, 320.0, 70, 0.06, 0.14, (1, 2, 4), 3, True),
)

# (geolocation as hosts write it, weight); most end in a 2-letter code, some are free text.
_LOCATIONS: tuple[tuple[str, int], ...] = (("Texas, US", 8), ("California, US", 7), ("Washington, US", 4),
    ("New York, US", 3), ("Ohio, US", 2), ("Ontario, CA", 4), ("Quebec, CA", 3), ("Bavaria, DE", 3),
    ("Hesse, DE", 2), ("Île-de-France, FR", 2), ("North Holland, NL", 2), ("England, GB", 2),
    ("Stockholm County, SE", 1), ("Oslo, NO", 1), ("Masovian Voivodeship, PL", 2), ("Prague, CZ", 1),
    ("Yutakachō, Shinagawa District, Tokyo, JP", 1), ("California, United States", 1),
    ("Singapore, SG", 1), ("Gauteng, ZA", 1), ("Ho Chi Minh City, VN", 1), ("Beijing, CN", 1),
    ("São Paulo, BR", 1), ("Victoria, AU", 1), ("Seoul, KR", 1))  # fmt: skip
# Where the clean first hosts live: the common cases plus the free-text forms a client must cope with.
_CLEAN_LOCATIONS = ("Texas, US", "Ontario, CA", "Bavaria, DE", "California, US", "California, United States",
                    "Yutakachō, Shinagawa District, Tokyo, JP", "Washington, US", "Quebec, CA")  # fmt: skip
_DRIVERS = (("470.223.02", 11.4), ("525.147.05", 12.0), ("535.183.01", 12.2), ("550.127.05", 12.4),
            ("560.35.03", 12.6), ("570.86.10", 12.8))  # fmt: skip
_CPUS = (("AMD EPYC 7543 32-Core Processor", 64), ("AMD Ryzen 9 5950X 16-Core Processor", 32),
         ("AMD Ryzen 9 7950X 16-Core Processor", 32), ("Intel Xeon Gold 6342", 48),
         ("Intel Core i9-13900K", 32), ("AMD EPYC 9654 96-Core Processor", 192),
         ("Intel Xeon E5-2698 v4", 40))  # fmt: skip
_MOBOS = ("ROMED8-2T", "X570 AORUS MASTER", "PRO WS WRX80E-SAGE SE WIFI", "H12SSL-i", "Z790 AORUS ELITE",
          "MZ32-AR0")  # fmt: skip
_DISKS = ("Samsung SSD 980 PRO 2TB", "WDS200T1X0E", "INTEL SSDPE2KX040T8", "Micron_7450_MTFDKCC3T8TFR")


def _pick_location(rng: random.Random) -> str:
    names = [name for name, _ in _LOCATIONS]
    weights = [w for _, w in _LOCATIONS]
    return rng.choices(names, weights=weights, k=1)[0]


def _driver_int(version: str) -> int:
    a, b, c = (int(p) for p in version.split("."))
    return a * 1_000_000 + b * 1_000 + c


@dataclass
class _Host:
    host_id: int
    location: str
    datacenter: bool
    verification: str
    reliability: float
    inet_down: float
    inet_up: float
    driver: tuple[str, float]
    ip_prefix: str


def _make_host(rng: random.Random, host_id: int, clean_index: int | None) -> _Host:
    clean = clean_index is not None
    datacenter = rng.random() < 0.3
    verification = (
        "verified" if clean else rng.choices(("verified", "unverified", "deverified"), (80, 16, 4))[0]
    )
    reliability = round(rng.uniform(0.95, 0.999) if clean else rng.uniform(0.80, 0.999), 4)
    speed = rng.uniform(1000, 10000) if datacenter else rng.uniform(50, 1000)
    return _Host(
        host_id=host_id,
        location=_pick_location(rng)
        if clean_index is None
        else _CLEAN_LOCATIONS[clean_index % len(_CLEAN_LOCATIONS)],
        datacenter=datacenter,
        verification=verification,
        reliability=reliability,
        inet_down=round(speed, 1),
        inet_up=round(speed * rng.uniform(0.3, 1.0), 1),
        driver=rng.choice(_DRIVERS[2:] if clean else _DRIVERS),
        ip_prefix=rng.choice(("203.0.113", "198.51.100", "192.0.2")),
    )


def build_catalogue(seed: int, num_offers: int, now: float) -> list[dict[str, Any]]:
    """`num_offers` offers, the same for the same seed (apart from the timestamps taken from `now`)."""
    rng = random.Random(seed)
    offers: list[dict[str, Any]] = []
    next_offer_id = 18_000_000 + rng.randint(0, 999_999)
    next_machine_id = 10_000 + rng.randint(0, 999)
    host_id = 40_000 + rng.randint(0, 9_999)
    weights = [m.weight for m in GPU_MODELS]
    while len(offers) < num_offers:
        host_id += rng.randint(1, 4_000)
        clean_round = len(offers) < len(GPU_MODELS)
        host = _make_host(rng, host_id, len(offers) if clean_round else None)
        machines = 1 if clean_round else rng.choice((1, 1, 2, 3, 4, 6))
        model = GPU_MODELS[len(offers)] if clean_round else rng.choices(GPU_MODELS, weights=weights)[0]
        for _ in range(machines):
            if len(offers) >= num_offers:
                break
            next_machine_id += rng.randint(1, 50)
            next_offer_id += rng.randint(1, 5_000)
            num_gpus = 1 if clean_round else rng.choice(model.counts)
            offer = _make_offer(rng, host, model, num_gpus, next_machine_id, next_offer_id, now, clean_round)
            offers.append(offer)
            if not clean_round and rng.random() < 0.3:
                model = rng.choices(GPU_MODELS, weights=weights)[0]
    return offers


def _make_offer(
    rng: random.Random,
    host: _Host,
    model: GpuModel,
    num_gpus: int,
    machine_id: int,
    offer_id: int,
    now: float,
    clean: bool,
) -> dict[str, Any]:
    """One offer dict in the wire shape of `offers[i]`. The helpers draw from ``rng`` in call order, then
    field order: the seeded catalogue depends on it (pinned by test_sim_catalogue)."""
    draws = _draw_terms(rng, host, model, num_gpus, clean)
    offer: dict[str, Any] = {
        **_gpu_fields(rng, host, model, num_gpus, machine_id, offer_id),
        **_machine_fields(rng, draws, num_gpus),
        **_market_fields(rng, host, draws, model, num_gpus, now),
    }
    return price_offer(offer, DEFAULT_STORAGE_GB, "on-demand")


@dataclass(frozen=True)
class _Draws:
    """The values drawn before the offer's fields (prices, CPU, lifetime, availability)."""

    dph_base: float
    storage_cost: float
    cpu: tuple[str, int]  # (name, threads)
    cpu_cores: int
    duration: float
    reliability2: float
    dlperf: float
    rentable: bool
    external: bool
    direct_ports: int


def _draw_terms(rng: random.Random, host: _Host, model: GpuModel, num_gpus: int, clean: bool) -> _Draws:
    per_gpu = rng.uniform(model.price_lo, model.price_hi)
    dph_base = round(per_gpu * num_gpus, 4)
    storage_cost = round(rng.uniform(0.05, 0.30), 4)
    cpu_name, cpu_threads = rng.choice(_CPUS)
    cpu_cores = min(cpu_threads, max(4, num_gpus * rng.choice((4, 8, 12, 16))))
    duration = rng.uniform(2, 120) * 86_400
    reliability2 = round(min(0.9999, max(0.8, host.reliability + rng.uniform(-0.01, 0.01))), 4)
    dlperf = round(model.tflops * num_gpus * rng.uniform(0.85, 1.05), 3)
    rentable = clean or rng.random() > 0.05
    external = not clean and rng.random() < 0.08
    direct_ports = 0 if (not clean and rng.random() < 0.08) else rng.choice((20, 50, 100, 200, 500, 1000))
    return _Draws(dph_base, storage_cost, (cpu_name, cpu_threads), cpu_cores, duration, reliability2, dlperf,
                  rentable, external, direct_ports)  # fmt: skip


def _gpu_fields(
    rng: random.Random, host: _Host, model: GpuModel, num_gpus: int, machine_id: int, offer_id: int
) -> dict[str, Any]:
    """Identity, place and GPU: the fields from ``id`` to ``bw_nvlink``."""
    driver_version, cuda = host.driver
    return {
        "id": offer_id,
        "ask_contract_id": offer_id,
        "bundle_id": offer_id + 7_000_000,
        "bundled_results": None,
        "machine_id": machine_id,
        "host_id": host.host_id,
        "hosting_type": 1 if host.datacenter else 0,
        "cluster_id": None,
        "public_ipaddr": f"{host.ip_prefix}.{rng.randint(2, 254)}",
        "geolocation": host.location,
        "geolocode": rng.randint(1_000_000, 9_999_999),
        "gpu_name": model.name,
        "num_gpus": num_gpus,
        "gpu_ram": model.ram_mb,
        "gpu_total_ram": model.ram_mb * num_gpus,
        "gpu_frac": 1.0,
        "gpu_arch": "nvidia",
        "gpu_mem_bw": round(model.mem_bw * rng.uniform(0.9, 1.0), 1),
        "gpu_max_power": model.max_power,
        "gpu_max_temp": rng.choice((83, 85, 87, 90)),
        "gpu_lanes": 16,
        "gpu_display_active": False,
        "compute_cap": model.compute_cap,
        "cuda_max_good": cuda,
        "driver_version": driver_version,
        "driver_vers": _driver_int(driver_version),
        "bw_nvlink": 600.0 if "SXM" in model.name else 0.0,
    }


def _machine_fields(rng: random.Random, draws: _Draws, num_gpus: int) -> dict[str, Any]:
    """CPU, memory, board and disk: the fields from ``cpu_name`` to ``disk_name``."""
    return {
        "cpu_name": draws.cpu[0],
        "cpu_arch": "amd64",
        "cpu_cores": draws.cpu[1],
        "cpu_cores_effective": float(draws.cpu_cores),
        "cpu_ghz": round(rng.uniform(2.2, 5.4), 1),
        "cpu_ram": rng.choice((32, 64, 128, 256, 512)) * 1024 * max(1, num_gpus // 2),
        "mobo_name": rng.choice(_MOBOS),
        "os_version": rng.choice(("20.04", "22.04", "24.04")),
        "has_avx": 1,
        "pci_gen": float(rng.choice((3, 4, 4, 5))),
        "pcie_bw": round(rng.uniform(6.0, 52.0), 1),
        "disk_space": float(rng.choice((60, 100, 200, 400, 800, 1500, 3000))),
        "disk_bw": round(rng.uniform(800, 7000), 1),
        "disk_name": rng.choice(_DISKS),
    }


def _market_fields(
    rng: random.Random, host: _Host, draws: _Draws, model: GpuModel, num_gpus: int, now: float
) -> dict[str, Any]:
    """Network, price, reliability and lifetime: the fields from ``inet_up`` to ``rn``."""
    return {
        "inet_up": host.inet_up,
        "inet_down": host.inet_down,
        "inet_up_cost": round(rng.uniform(0.0, 0.01), 4),
        "inet_down_cost": round(rng.uniform(0.0, 0.01), 4),
        "direct_port_count": draws.direct_ports,
        "dph_base": draws.dph_base,
        "storage_cost": draws.storage_cost,
        "min_bid": round(draws.dph_base * rng.uniform(0.3, 0.7), 4),
        "credit_discount_max": 0.4,
        "discount_rate": round(rng.uniform(0.1, 0.4), 3),
        "dlperf": draws.dlperf,
        "total_flops": round(model.tflops * num_gpus, 2),
        "reliability": host.reliability,
        "reliability2": draws.reliability2,
        "reliability_mult": round(host.reliability**2, 4),
        "verification": host.verification,
        "verified": host.verification == "verified",
        "vericode": 1 if host.verification == "verified" else 0,
        "rentable": draws.rentable,
        "rented": False,
        "external": draws.external,
        "static_ip": host.datacenter or rng.random() < 0.3,
        "vms_enabled": rng.random() < 0.2,
        "is_vm_deverified": False,
        "resource_type": "gpu",
        "start_date": round(now - rng.uniform(0, 30) * 86_400, 3),
        "end_date": round(now + draws.duration, 3),
        "duration": round(draws.duration, 1),
        "time_remaining": None,
        "time_remaining_isbid": None,
        "logo": "/static/logos/vastai_small2.png",
        "webpage": None,
        "rn": None,
    }


def price_offer(
    offer: dict[str, Any], storage_gb: float, kind: str, bid: float | None = None
) -> dict[str, Any]:
    """A copy of `offer` priced for `storage_gb` of disk and search type `kind` (on-demand, bid, reserved).

    With `bid` (an interruptible rental's price), the GPU part is the bid instead.
    """
    priced = dict(offer)
    storage_per_hour = storage_gb * offer["storage_cost"] / HOURS_PER_MONTH
    gpu_price = offer["min_bid"] if kind == "bid" else offer["dph_base"]
    if bid is not None:
        kind, gpu_price = "bid", bid
    total = round(gpu_price + storage_per_hour, 6)
    discounted = round(total * (1 - offer["discount_rate"]), 6)
    score = offer["dlperf"] / total * offer["reliability"] if total else 0.0
    priced.update(
        dph_total=total,
        dph_total_adj=total,
        is_bid=kind == "bid",
        storage_total_cost=round(storage_per_hour, 6),
        vram_costperhour=round(total / max(1, offer["gpu_total_ram"] / 1024), 6),
        discounted_hourly=discounted if kind == "reserved" else 0.0,
        discounted_dph_total=discounted if kind == "reserved" else total,
        dlperf_per_dphtotal=round(offer["dlperf"] / total, 4) if total else 0.0,
        flops_per_dphtotal=round(offer["total_flops"] / total, 4) if total else 0.0,
        score=round(score, 4),
        internet_up_cost_per_tb=round(offer["inet_up_cost"] * 1024, 3),
        internet_down_cost_per_tb=round(offer["inet_down_cost"] * 1024, 3),
        search={"gpuCostPerHour": gpu_price, "diskHour": round(storage_per_hour, 6), "totalHour": total},
        instance={"gpuCostPerHour": gpu_price, "diskHour": round(storage_per_hour, 6), "totalHour": total},
    )
    return priced


def relist_offer(offer: dict[str, Any], new_id: int, now: float) -> dict[str, Any]:
    """The same machine back on the market under a new ask id (after its instance was destroyed)."""
    fresh = dict(offer)
    fresh.update(
        id=new_id,
        ask_contract_id=new_id,
        bundle_id=new_id + 7_000_000,
        rented=False,
        rentable=True,
        start_date=round(now, 3),
    )
    return fresh


def gpu_names() -> list[str]:
    """Every GPU model name the marketplace knows, sorted."""
    return sorted(m.name for m in GPU_MODELS)


# Body keys of a search that are not column filters.
_SEARCH_OPTIONS = frozenset(
    {"order", "type", "limit", "allocated_storage", "disable_bundling", "extra_ids", "show_incompatible",
     "select_cols", "sort_option", "georegion", "chunked"}
)  # fmt: skip
_SEARCH_TYPES = {"on-demand": "on-demand", "ondemand": "on-demand", "bid": "bid", "interruptible": "bid",
                 "reserved": "reserved"}  # fmt: skip
DEFAULT_SEARCH_LIMIT = 64


def search(offers: list[dict[str, Any]], query: Any) -> list[dict[str, Any]]:
    """Offers matching a search body, priced for its `allocated_storage` and `type`, ordered, limited.

    Rented or unrentable offers are left out unless the query filters on `rentable` or `rented` itself.
    Filters on a column no offer has are ignored (the CLI warns about such fields but still sends them).
    """
    if not isinstance(query, dict):
        raise filters.FilterError("search query must be a JSON object")
    kind = _SEARCH_TYPES.get(str(query.get("type", "on-demand")).lower())
    if kind is None:
        raise filters.FilterError(f"invalid search type {query.get('type')!r}")
    storage = _number(query.get("allocated_storage", DEFAULT_STORAGE_GB), "allocated_storage")
    limit = int(_number(query.get("limit", DEFAULT_SEARCH_LIMIT), "limit"))
    raw_filters = {k: v for k, v in query.items() if k not in _SEARCH_OPTIONS}
    known = set(offers[0]) if offers else set()
    conditions = [c for c in filters.parse_filters(raw_filters) if c.column in known]
    priced = [price_offer(o, storage, kind) for o in offers]
    if "rentable" not in raw_filters and "rented" not in raw_filters:
        priced = [o for o in priced if o["rentable"] and not o["rented"]]
    hits = [o for o in priced if filters.row_matches(o, conditions)]
    columns, descending = filters.parse_offer_order(query.get("order"))
    ordered = filters.sort_rows(hits, [*columns, "id"], [*descending, False])
    return [dict(o) for o in ordered[: max(limit, 0) or DEFAULT_SEARCH_LIMIT]]


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise filters.FilterError(f"{name} must be a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise filters.FilterError(f"{name} must be a number") from None
