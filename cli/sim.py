"""``mksgn-sim`` and ``mksgn-energy``: replay an export in Lava and compare energy reports.

``mksgn-sim`` exits 0 only when Lava and the twin agree bit for bit on every clip; a
divergence prints the table and exits 2 naming the first diverging group, step and neuron.
"""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import run

from hw_sim.errors import SimError


@click.command(help="Replay an export directory in Lava (Loihi2SimCfg fixed_pt) on real clips, check every "
                    "spike and u/v bit-for-bit against the PyTorch twin, and report synaptic events and energy.")
@click.argument("export_dir", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Dataset folder (e.g. ../shared/data/nw-ucla).")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True, help="Split to replay.")
@click.option("--clips", default="8", show_default=True, help="Number of clips, or 'all'.")
@click.option("--report", type=click.Path(path_type=Path), default=None, help="Write the JSON report here.")
@click.option("--plots", type=click.Path(path_type=Path), default=None, help="Write PNG plots into this folder.")
@click.option("--chunk", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Clips per run chunk (the host reads the probe rings between chunks).")
@click.option("--timeout", "timeout_s", type=float, default=None,
              help="Seconds one chunk may run before the replay is declared stuck (default 300 + 30 per step).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def cli(export_dir, data, split, clips, report, plots, chunk, timeout_s, quiet):
    from hw_sim.report import format_table
    from hw_sim.simulate import simulate
    _, rep = simulate(export_dir, data, split, clips, chunk=chunk, timeout_s=timeout_s, report_path=report,
                      plots_dir=plots, progress=not quiet)
    click.echo(format_table(rep))
    if report:
        click.echo(f"report: {report}")
    if not rep["bit_exact"]:
        raise SimError(f"Lava and the twin differ on {len(rep['mismatches'])} of {rep['clips']} clips: "
                       f"{rep['mismatches'][0]['message']}")


@click.command(help="Side-by-side table and bar chart of two or more mksgn-sim / mksgn-eval energy reports.")
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Write the bar chart PNG here.")
def energy_cli(reports, plot):
    from hw_sim.report import compare_reports, load_report, plot_comparison, report_labels

    if len(reports) < 2:
        raise SimError(f"mksgn-energy compares reports side by side and needs at least two "
                       f"report files; got {len(reports)}: {', '.join(map(str, reports))}")
    loaded = list(zip(report_labels(reports), (load_report(p) for p in reports)))
    click.echo(compare_reports(loaded))
    if plot is not None:
        click.echo(f"wrote {plot_comparison(loaded, plot)}")


main = run(cli)
energy_main = run(energy_cli)
