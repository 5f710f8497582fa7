"""Energy to CO₂-equivalent: ``gCO2e = kWh × carbon_intensity × PUE``. No network or geo-IP look-up, ever."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "J_PER_KWH",
    "J_PER_WH",
    "WORLD_AVERAGE_G_PER_KWH",
    "CarbonModel",
    "energy_unit",
    "format_energy",
    "joules_to",
    "to_joules",
]

J_PER_WH = 3600.0
J_PER_KWH = 3.6e6

WORLD_AVERAGE_G_PER_KWH = 475.0
"""World-average carbon intensity of electricity (IEA, Global Energy & CO2 Status Report 2019), the figure
carbontracker and CodeCarbon fall back to. Reported as a default wherever it is used."""

_UNIT_J = {"J": 1.0, "Wh": J_PER_WH, "kWh": J_PER_KWH}


def joules_to(energy_j: float, unit: str) -> float:
    """Convert joules to ``unit`` (``"J"``, ``"Wh"`` or ``"kWh"``).

    Example:
        >>> joules_to(7200.0, "Wh")
        2.0
    """
    return energy_j / _UNIT_J[unit]


def energy_unit(max_j: float) -> tuple[float, str]:
    """Divisor and unit to show ``max_j`` joules: J below 1 Wh, Wh below 0.1 kWh, else kWh.

    Example:
        >>> energy_unit(500.0), energy_unit(7200.0), energy_unit(1e6)
        ((1.0, 'J'), (3600.0, 'Wh'), (3600000.0, 'kWh'))
    """
    if abs(max_j) < J_PER_WH:
        return 1.0, "J"
    if abs(max_j) < J_PER_KWH / 10:
        return J_PER_WH, "Wh"
    return J_PER_KWH, "kWh"


def format_energy(energy_j: float) -> str:
    """Joules for people: ``12.3 J``, ``2.00 Wh`` or ``0.150 kWh``.

    Example:
        >>> format_energy(12.345), format_energy(7200.0), format_energy(5.4e5)
        ('12.3 J', '2.00 Wh', '0.150 kWh')
    """
    divisor, unit = energy_unit(energy_j)
    digits = {"J": 1, "Wh": 2, "kWh": 3}[unit]
    return f"{energy_j / divisor:.{digits}f} {unit}"


def to_joules(value: float, unit: str) -> float:
    """Convert ``value`` in ``unit`` (``"J"``, ``"Wh"`` or ``"kWh"``) to joules.

    Example:
        >>> to_joules(0.5, "Wh")
        1800.0
    """
    return value * _UNIT_J[unit]


@dataclass(frozen=True)
class CarbonModel:
    """Carbon conversion with explicit intensity and PUE.

    Args:
        intensity_g_per_kwh: Grid carbon intensity in gCO2e per kWh; ``None`` uses the world average and
            the report says so.
        pue: Data-centre power usage effectiveness (facility energy / IT energy), at least 1.

    Example:
        >>> CarbonModel(intensity_g_per_kwh=100.0, pue=1.5).gco2e(3.6e6)
        150.0
        >>> CarbonModel().intensity_is_default
        True
    """

    intensity_g_per_kwh: float | None = None
    pue: float = 1.0

    @property
    def intensity(self) -> float:
        """Intensity actually used (g/kWh)."""
        return WORLD_AVERAGE_G_PER_KWH if self.intensity_g_per_kwh is None else self.intensity_g_per_kwh

    @property
    def intensity_is_default(self) -> bool:
        """True when no intensity was given and the world average is used."""
        return self.intensity_g_per_kwh is None

    def gco2e(self, energy_j: float) -> float:
        """Grams of CO₂-equivalent for ``energy_j`` joules of IT energy."""
        return energy_j / J_PER_KWH * self.intensity * self.pue

    def as_dict(self) -> dict[str, object]:
        """Plain-dict form for the energy report, enough to recompute CO₂ from the raw joules."""
        return {
            "intensity_g_per_kwh": self.intensity,
            "intensity_source": "default: world average (IEA 2019)" if self.intensity_is_default else "user",
            "pue": self.pue,
            "formula": "gCO2e = energy_J / 3.6e6 * intensity_g_per_kwh * pue",
        }
