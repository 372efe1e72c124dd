"""Costs per machine: training minutes and speed compare only within one machine, in the summary and the plot."""

import pytest

from visattn.study.report import aggregate, plot_accuracy_vs_cost

MACHINES = [{"cpu": "A"}, {"cpu": "B"}]


def _record(variant, seconds, cpu, seed=0):
    return {"variant": variant, "seed": seed, "test_acc": 0.8, "params": 10, "flops": 10, "train_img_s": 6000 / seconds,
            "train_seconds": seconds, "machine": {"cpu": cpu}}


def _summary(records, machines=MACHINES):
    variants = aggregate(records, ["base", "other"], "base", machines)
    return {"title": "t", "machines": machines, "variants": variants, "records": records}


def test_costs_are_kept_per_machine_each_run_trained_on():
    records = [_record("base", 600, "A"), _record("base", 1200, "B", 1), _record("base", 1320, "B", 2),
               _record("other", 60, "A")]
    costs = _summary(records)["variants"]["base"]["cost_by_machine"]
    assert [(c["machine"], c["runs"]) for c in costs] == [(1, 1), (2, 2)]
    assert costs[0]["train_minutes_mean"] == 10 and costs[1]["train_minutes_mean"] == 21
    assert costs[1]["train_minutes_std"] == pytest.approx(2 ** 0.5)
    assert costs[1]["train_img_s_mean"] == pytest.approx((5 + 6000 / 1320) / 2)
    other = _summary(records)["variants"]["other"]["cost_by_machine"]
    assert [c["machine"] for c in other] == [1]  # no entry for a machine the variant never ran on
    one = aggregate(records, ["base"], "base")["base"]["cost_by_machine"]  # no machines given: all count as one
    assert len(one) == 1 and one[0]["runs"] == 3 and one[0]["train_minutes_mean"] == pytest.approx(52 / 3)


def test_the_plot_is_written_for_a_grid_shared_among_machines(tmp_path):
    records = [_record("base", 600, "A"), _record("base", 1200, "B", 1), _record("other", 900, "B")]
    plot_accuracy_vs_cost(_summary(records), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")
