"""The accuracy-vs-cost plot: training minutes are grouped by machine, since they compare only within one."""

from visattn.study.report import _minutes_by_machine, plot_accuracy_vs_cost


def _summary(records):
    machines = [{"cpu": "A"}, {"cpu": "B"}]
    variants = {"base": {"runs": 2, "test_acc_mean": 0.8, "test_acc_std": 0.01, "params": 1e6}}
    return {"title": "t", "machines": machines, "variants": variants, "records": records}


def test_minutes_are_grouped_by_the_machine_each_run_trained_on():
    records = [{"variant": "base", "train_seconds": 600, "machine": {"cpu": "A"}},
               {"variant": "base", "train_seconds": 1200, "machine": {"cpu": "B"}},
               {"variant": "base", "train_seconds": 1320, "machine": {"cpu": "B"}},
               {"variant": "other", "train_seconds": 60, "machine": {"cpu": "A"}}]
    summary = _summary(records)
    assert _minutes_by_machine(summary, "base", summary["machines"]) == [[10.0], [20.0, 22.0]]
    assert _minutes_by_machine(summary, "base", []) == [[10.0, 20.0, 22.0]]  # one machine, or none recorded


def test_the_plot_is_written_for_a_grid_shared_among_machines(tmp_path):
    records = [{"variant": "base", "train_seconds": 600, "machine": {"cpu": "A"}},
               {"variant": "base", "train_seconds": 1200, "machine": {"cpu": "B"}}]
    plot_accuracy_vs_cost(_summary(records), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")
