"""Add EnergyMonitor (and an EnergyBudget) to a plain Lightning Trainer.

python examples/energy_example.py
"""

from lightning.pytorch import Trainer, seed_everything

from lightning_green import EnergyBudget, EnergyMonitor
from lightning_green.demos import DigitsCNN, DigitsDataModule


def main() -> None:
    seed_everything(0)
    monitor = EnergyMonitor(carbon_intensity=56.0, pue=1.1)
    trainer = Trainer(
        max_epochs=5,
        callbacks=[monitor, EnergyBudget(max_energy=2.0, unit="Wh", on_forecast="warn")],
    )
    trainer.fit(DigitsCNN(), DigitsDataModule())
    print(
        f"fit used {monitor.total_energy_j('fit'):.1f} J ({monitor.label('fit')}), "
        f"{monitor.total_gco2e('fit'):.4f} gCO2e; report in {trainer.log_dir}/energy_report.json"
    )


if __name__ == "__main__":
    main()
