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
