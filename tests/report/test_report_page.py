import json

import yaml

from trajdistill.report import build_report


def summary(label, greedy, avg):
    stat = lambda m: {"mean": m, "se": 0.05}
    return {"label": label, "problems": 64, "n": 4, "k": [1, 4], "greedy": stat(greedy), "avg@4": stat(avg),
            "pass@1": stat(avg), "pass@4": stat(avg + 0.2), "response_tokens": stat(40.0)}


def make_run(root, name, lr, after_greedy):
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"method": "opsd", "optim": {"lr": lr, "steps": 3}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "kl/mean": 0.5 / s}) + "\n"
                                               for s in (1, 2, 3)))
    (run / "eval" / "before.json").write_text(json.dumps(summary("before", 0.20, 0.15)))
    (run / "eval" / "after.json").write_text(json.dumps(summary("after", after_greedy, 0.30)))
    return run


def test_report_compares_runs_with_deltas_config_differences_and_plots(tmp_path):
    a = make_run(tmp_path, "fkl", 1e-4, 0.30)
    b = make_run(tmp_path, "rkl", 5e-4, 0.25)
    path = build_report([a, b], tmp_path / "out")
    text = path.read_text()
    assert "| base | 20.0 ± 5.0" in text
    assert "| fkl | 30.0 ± 5.0" in text and "+10.0" in text
    assert "| rkl | 25.0 ± 5.0" in text and "+5.0" in text
    assert "`optim.lr`" in text and "`optim.steps`" not in text  # only differences are listed
    assert (tmp_path / "out" / "plots" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "out" / "plots" / "kl_mean.png").exists()
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<table>" in html and "kl_mean.png" in html


def greedy_summary(label, passed):
    """A greedy-only evaluation with its per-problem results (what eval.runner.summarise writes)."""
    mean = sum(passed) / len(passed)
    return {"label": label, "problems": len(passed), "n": 1, "k": [1], "greedy": {"mean": mean, "se": 0.1},
            "avg@1": {"mean": mean, "se": 0.1}, "pass@1": {"mean": mean, "se": 0.1},
            "per_problem": {f"p{i}": {"greedy": v, "correct": v} for i, v in enumerate(passed)},
            "response_tokens": {"mean": 10.0, "se": 0.0}}


def paired(new, old):
    """Brute force: mean and standard error (n - 1) of the per-problem differences, in points."""
    d = [a - b for a, b in zip(new, old)]
    m = sum(d) / len(d)
    se = (sum((x - m) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5
    return f"{100 * m:+.1f} ± {100 * se:.1f}"


def greedy_runs(tmp_path, base: list[int], results: dict[str, list[int]]) -> list:
    """One run directory per `results` entry: greedy before (`base`) and after (its list)."""
    runs = []
    for name, passed in results.items():
        run = tmp_path / name
        (run / "eval").mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"method": "sft", "name": name}))
        (run / "eval" / "before.json").write_text(json.dumps(greedy_summary("before", base)))
        (run / "eval" / "after.json").write_text(json.dumps(greedy_summary("after", passed)))
        runs.append(run)
    return runs


def test_report_gives_paired_changes_vs_base_and_between_every_pair_of_runs(tmp_path):
    base = [0, 0, 1, 0, 1, 0, 0, 1, 0, 0]
    results = {"a": [1, 0, 1, 0, 1, 1, 0, 1, 0, 0], "b": [0, 1, 1, 1, 1, 0, 0, 1, 1, 0],
               "c": [0, 0, 0, 0, 1, 0, 0, 1, 0, 0]}
    runs = greedy_runs(tmp_path, base, results)
    text = build_report(runs, tmp_path / "out").read_text()
    rows = {line.split(" | ")[0][2:]: line 
            for line in text.split("## Paired")[0].splitlines() if line.startswith("| ")}
    for name, passed in results.items():
        assert rows[name].startswith(f"| {name} | {10 * sum(passed):.1f} ± 10.0 | ")
        assert rows[name].endswith(f" | {paired(passed, base)} |")  # Δ vs base, paired
    pairwise = text.split("## Paired differences between runs")[1].split("##")[0]
    a, b, c = results["a"], results["b"], results["c"]
    assert f"| a | · | {paired(a, b)} | {paired(a, c)} |" in pairwise
    assert f"| b | {paired(b, a)} | · | {paired(b, c)} |" in pairwise
    assert f"| c | {paired(c, a)} | {paired(c, b)} | · |" in pairwise
    # evaluations of different problem sets cannot be paired, and say so
    other = greedy_summary("after", [1, 1, 0])
    (runs[2] / "eval" / "after.json").write_text(json.dumps(other))
    text = build_report(runs, tmp_path / "out2").read_text()
    assert "(unpaired)" in text


def test_report_gives_the_minimum_detectable_effect_beside_each_paired_change(tmp_path):
    base = [0] * 10
    results = {"same": [0] * 10, "two": [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]}
    runs = greedy_runs(tmp_path, base, results)
    text = build_report(runs, tmp_path / "out").read_text()
    held_out = text.split("## Paired")[0]
    assert "| method | greedy | avg@1 | pass@1 | MDE (80 % power) | Δ greedy vs base (paired) |" in held_out
    # no problem differs: the rule of three, 300 / 10 problems = 30 points
    assert "| same | 0.0 ± 10.0 | 0.0 ± 10.0 | 0.0 ± 10.0 | 30.0 | +0.0 ± 0.0 |" in held_out
    # differences 1, 1, 0 x 8: SE = sqrt((2 * 0.8^2 + 8 * 0.2^2) / 9 / 10) = 2/15; 2.801585 * 2/15 = 0.3735
    assert "| two | 20.0 ± 10.0 | 20.0 ± 10.0 | 20.0 ± 10.0 | 37.4 | +20.0 ± 13.3 |" in held_out
    assert "| base | 0.0 ± 10.0 | 0.0 ± 10.0 | 0.0 ± 10.0 | - | - |" in held_out
    pairwise = text.split("## Paired differences between runs")[1].split("##")[0]
    assert "| same | · | -20.0 ± 13.3 |" in pairwise and "| two | +20.0 ± 13.3 | · |" in pairwise
    mde = pairwise.split("MDE (80 % power) of each Δ greedy above")[1]
    assert "| same | · | 37.4 |" in mde and "| two | 37.4 | · |" in mde
    assert "2.80 x SE; 300/n points when no problem differs" in mde
