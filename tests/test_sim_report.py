"""hw_sim.report and mksgn-energy on hand-made replay reports (no Lava run, no data)."""
import copy
import json

import pytest
from click.testing import CliRunner

from cli.sim import energy_cli, energy_main
from hw_sim.errors import SimError
from hw_sim.report import (compare_reports, format_table, load_report, plot_comparison, plot_report,
                           report_labels)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _layer(name, neurons, rate, events, sops, e_meas_pj, e_ana_pj, T=4):
    return {"name": name, "neurons": neurons, "spikes": rate * neurons * T, "neuron_updates": neurons * T,
            "synaptic_events": events, "twin_synaptic_events": events, "host_macs": 0, "flops": 0.0,
            "analytic_sops": sops, "energy_pj_measured": e_meas_pj, "energy_pj_analytic": e_ana_pj,
            "firing_rate": rate, "ratio": e_meas_pj / e_ana_pj if e_ana_pj else None}


def make_report(bit_exact=True, arch="mksgn", scale=1.0):
    layers = [
        _layer("sc", 8320, 0.04, 0.0, 0.0, 325864.0 * scale, 325864.0 * scale),
        _layer("layers.0", 4096, 0.12, 2.5e6 * scale, 7.0e6, 2.25e6 * scale, 6.3e6),
        _layer("layers.1", 2048, 0.0, 0.0, 0.0, 0.0, 0.0),
        _layer("head", 10, 0.3, 1.2e4, 3.0e4, 1.08e4, 2.7e4),
    ]
    layers[0]["host_macs"] = 70840
    e_meas = sum(r["energy_pj_measured"] for r in layers) * 1e-9
    e_ana = sum(r["energy_pj_analytic"] for r in layers) * 1e-9
    mismatches = [] if bit_exact else [
        {"clip": 2, "group": "layers.0.lif", "var": "v", "step": 1, "lava_step": 3, "neuron": 17,
         "index": [0, 1, 2, 3], "lava": 5, "twin": 6,
         "message": "clip 2: first divergence at group layers.0.lif, v, time step 1 (Lava step 3), "
                    "neuron 17 (0, 1, 2, 3): lava 5 vs twin 6"}]
    return {"clips": 3, "bit_exact": bit_exact, "mismatches": mismatches,
            "lava_top1": 33.3 if bit_exact else None, "twin_top1": 33.3, "events_equal": True,
            "host_macs_per_clip": 70840,
            "synaptic_events_per_clip": sum(r["synaptic_events"] for r in layers),
            "analytic_sops_per_clip": sum(r["analytic_sops"] for r in layers),
            "energy_mj_measured_per_clip": e_meas, "energy_mj_analytic_per_clip": e_ana,
            "energy_ratio_measured_over_analytic": e_meas / e_ana,
            "energy_model": {"e_mac_pj": 4.6, "e_ac_pj": 0.9, "source": "45nm (Horowitz 2014)"},
            "arch": arch, "time_steps": 4, "layers": layers}


def _write(path, report):
    path.write_text(json.dumps(report))
    return path


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > 5000, f"{path} is suspiciously small ({len(data)} bytes)"


# ----------------------------------------------------------------------------- format_table

def test_table_lists_every_layer_and_bit_exact_verdict():
    rep = make_report()
    text = format_table(rep)
    lines = text.splitlines()
    for name in ("sc", "layers.0", "layers.1", "head"):
        assert any(line.split()[0] == name for line in lines if line.strip()), name
    assert "bit-exact on 3/3 clips" in text and "NOT" not in text
    assert "lava top-1 33.30% | twin top-1 33.30%" in text
    # layer energies are shown in µJ: 2.25e6 pJ -> 2.25 µJ, analytic 6.3e6 pJ -> 6.3 µJ, ratio 0.357
    row = next(line for line in lines if line.startswith("layers.0"))
    assert "2.25" in row.split() and "6.3" in row.split() and "0.357" in row.split()
    assert "µJ" in text
    # layers.1 has no analytic energy: ratio n/a, not a crash or a division by zero
    assert next(line for line in lines if line.startswith("layers.1")).split()[-1] == "n/a"
    # totals row: total measured energy per clip in µJ
    total = next(line for line in lines if line.startswith("total"))
    assert f"{rep['energy_mj_measured_per_clip'] * 1e3:.4g}" in total.split()
    # fixed width: header, rule and all rows of the table line up on the rule's width
    rule = next(line for line in lines if set(line) <= {"-", " "} and line)
    body = [line for line in lines if line.split() and line.split()[0] in ("layer", "sc", "head", "total")]
    assert all(len(line) == len(rule) for line in body)


def test_table_verdict_names_the_diverging_clip_and_na_top1():
    text = format_table(make_report(bit_exact=False))
    verdict = next(line for line in text.splitlines() if "bit-exact" in line)
    assert verdict.startswith("NOT bit-exact: 1 of 3 clips diverge")
    assert "clip 2" in verdict and "lava 5 vs twin 6" in verdict
    assert "lava top-1 n/a | twin top-1 33.30%" in text


# ----------------------------------------------------------------------------- plots

def test_plot_report_writes_pngs_atomically(tmp_path):
    out = tmp_path / "plots"
    paths = plot_report(make_report(), out)
    assert sorted(p.name for p in paths) == ["energy_per_layer.png", "firing_rates.png"]
    for p in paths:
        assert p.parent == out
        _assert_png(p)
    assert sorted(p.name for p in out.iterdir()) == ["energy_per_layer.png", "firing_rates.png"]  # no temp files


def test_plot_comparison_png(tmp_path):
    path = plot_comparison([("a", make_report()), ("b", make_report(scale=1000.0))], tmp_path / "sub" / "cmp.png")
    assert path == tmp_path / "sub" / "cmp.png"
    _assert_png(path)
    assert [p.name for p in path.parent.iterdir()] == ["cmp.png"]


# ----------------------------------------------------------------------------- compare / load

def test_compare_reports_shows_both_columns():
    a, b = make_report(), make_report(bit_exact=False, arch="base_sgn", scale=2.0)
    b["layers"] = [r for r in b["layers"] if r["name"] != "head"]
    text = compare_reports([("run_a", a), ("run_b", b)])
    lines = text.splitlines()
    assert lines[0].split() == ["run_a", "run_b"]

    def row(label):
        line = next(line for line in lines if line.strip().startswith(label))
        return line[len(line) - len(line.lstrip()) + len(label):].split()

    assert row("arch") == ["mksgn", "base_sgn"]
    assert row("bit_exact") == ["yes", "no", "(1", "of", "3", "diverge)"]
    assert row("lava top-1") == ["33.30%", "n/a"]
    assert row("E measured [mJ/clip]") == [f"{a['energy_mj_measured_per_clip']:.4g}",
                                           f"{b['energy_mj_measured_per_clip']:.4g}"]
    assert row("synaptic events/clip") == [f"{a['synaptic_events_per_clip']:,.0f}",
                                           f"{b['synaptic_events_per_clip']:,.0f}"]
    assert row("layers.0") == ["2.25", "4.5"]  # µJ per clip
    assert row("head") == ["0.0108", "-"]  # absent from b


def test_load_report_errors(tmp_path):
    good = _write(tmp_path / "good.json", make_report())
    assert load_report(good)["clips"] == 3
    with pytest.raises(SimError, match="missing.json: no such file"):
        load_report(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SimError, match=r"bad\.json: not valid JSON"):
        load_report(bad)
    ev = _write(tmp_path / "eval.json", {"top1": 60.0, "analysis": {}, "clips": 10})
    with pytest.raises(SimError, match=r"eval\.json: missing 'layers', 'energy_mj_measured_per_clip'.*mksgn-eval"):
        load_report(ev)
    rep = make_report()
    del rep["layers"][1]["energy_pj_analytic"]
    with pytest.raises(SimError, match=r"layers\[1\] \(layers\.0\) is missing 'energy_pj_analytic'"):
        load_report(_write(tmp_path / "layer.json", rep))
    with pytest.raises(SimError, match="not an object"):
        load_report(_write(tmp_path / "list.json", [1, 2]))


def test_report_labels_disambiguate_equal_stems(tmp_path):
    assert report_labels([tmp_path / "a.json", tmp_path / "b.json"]) == ["a", "b"]
    assert report_labels(["x/report.json", "y/report.json"]) == ["x/report", "y/report"]


# ----------------------------------------------------------------------------- mksgn-energy

def _run_entry_point(args):
    """Run the real console-script entry point (the ``run`` wrapper) with captured output."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        with pytest.raises(SystemExit) as exc:
            energy_main([str(a) for a in args])
        return exc.value.code, out.getvalue().decode(), err.getvalue().decode()


def test_energy_cli_compares_two_reports(tmp_path):
    a = _write(tmp_path / "mksgn_run.json", make_report())
    b = copy.deepcopy(make_report(arch="base_sgn", scale=3.0))
    b = _write(tmp_path / "base_run.json", b)
    plot = tmp_path / "cmp.png"
    result = CliRunner().invoke(energy_cli, [str(a), str(b), "--plot", str(plot)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    header = result.output.splitlines()[0].split()
    assert header == ["mksgn_run", "base_run"]
    assert "base_sgn" in result.output and f"wrote {plot}" in result.output
    _assert_png(plot)


def test_energy_cli_needs_two_reports(tmp_path):
    a = _write(tmp_path / "only.json", make_report())
    code, out, err = _run_entry_point([a])
    assert code == 2
    assert "error:" in err and "at least two" in err and "only.json" in err
    assert "Traceback" not in out + err


def test_energy_cli_rejects_non_json_without_traceback(tmp_path):
    a = _write(tmp_path / "good.json", make_report())
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not a report\n")
    code, out, err = _run_entry_point([a, bad])
    assert code == 2
    assert "notes.txt" in err and "not valid JSON" in err
    assert "Traceback" not in out + err
    # the same through click's runner: the error is a SimError naming the file, not a crash
    result = CliRunner().invoke(energy_cli, [str(a), str(bad)])
    assert result.exit_code != 0 and isinstance(result.exception, SimError)
    assert "notes.txt" in str(result.exception)
