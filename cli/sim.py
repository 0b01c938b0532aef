"""``mksgn-sim`` and ``mksgn-energy``: replay an export in Lava and compare energy reports.

``mksgn-sim`` exits 0 only when Lava and the twin agree bit for bit on every clip; a
divergence prints the table and exits 2 naming the first diverging group, step and neuron.
"""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import run
from mksgn.guard import number, optional_output, output_dir, output_file

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
    from hw_sim.report import format_table, plot_report
    from hw_sim.simulate import check_clips, simulate
    # options and output paths are checked before the export is read and Lava compiles
    check_clips(clips)
    number(timeout_s, "--timeout", 0, 7 * 24 * 3600, low_open=True)
    output_file(report, "--report")
    output_dir(plots, "--plots")
    _, rep = simulate(export_dir, data, split, clips, chunk=chunk, timeout_s=timeout_s, report_path=report,
                      plots_dir=None, progress=not quiet)
    click.echo(format_table(rep))
    if report:
        click.echo(f"report: {report}")
    if plots:  # after the verdict is printed and the report written; a failure is only a warning
        for p in optional_output(lambda: plot_report(rep, plots), f"plots in {plots}") or ():
            click.echo(f"wrote {p}")
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
    output_file(plot, "--plot")
    loaded = list(zip(report_labels(reports), (load_report(p) for p in reports)))
    click.echo(compare_reports(loaded))
    if plot is not None:  # the table is printed; a failing chart is a warning
        written = optional_output(lambda: plot_comparison(loaded, plot), str(plot))
        if written:
            click.echo(f"wrote {written}")


main = run(cli)
energy_main = run(energy_cli)
