"""`trajdistill report RUN_DIR...`: one page comparing runs side by side.

Reads only run directories (`config.yaml`, `metrics.jsonl`, `eval/*.json`), so any finished or
interrupted run can be reported. Writes `report.md`, `report.html` and PNG training curves.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import yaml

from trajdistill import UserError
from trajdistill.eval.metrics import min_detectable_effect
from trajdistill.eval.runner import fmt, metric_columns, paired_change
from trajdistill.files import atomic_write_text, read_jsonl


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def load_run(path: Path) -> dict:
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise UserError(f"{path} is not a run directory (no config.yaml)")
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    if isinstance(config, dict):  # a run from before the `speed:` section compares with a newer one
        from trajdistill.config import move_speed_fields

        config = move_speed_fields(config)
    run = {"dir": path, "name": path.name, "config": config}
    run["metrics"] = read_jsonl(path / "metrics.jsonl") if (path / "metrics.jsonl").exists() else []
    run["evals"] = {}
    for f in sorted((path / "eval").glob("*.json")) if (path / "eval").is_dir() else []:
        import json

        run["evals"][f.stem] = json.loads(f.read_text())
    return run


def config_differences(runs: list[dict]) -> list[tuple[str, list[object]]]:
    flat = [_flatten(r["config"]) for r in runs]
    keys = sorted(set().union(*flat) - {"output_dir"})
    return [(k, [f.get(k) for f in flat]) for k in keys if len({repr(f.get(k)) for f in flat}) > 1]


def _rows(runs: list[dict]) -> tuple[dict | None, list[tuple[str, dict]]]:
    """The base model (the first `before` evaluation) and each run's final model."""
    base = next((r["evals"]["before"] for r in runs if "before" in r["evals"]), None)
    rows = [("base", base)] if base else []
    return base, rows + [(r["name"], r["evals"]["after"]) for r in runs if "after" in r["evals"]]


def _change(new: dict, old: dict, column: str) -> str:
    """`new - old` in points: paired (± SE of the per-problem differences) when both evaluations
    scored the same problems, else the plain difference of the means marked `(unpaired)`."""
    paired = paired_change(old, new, column)
    if paired is not None:
        return f"{100 * paired['mean']:+.1f} ± {100 * paired['se']:.1f}"
    if new.get(column) and old.get(column):
        return f"{100 * (new[column]['mean'] - old[column]['mean']):+.1f} (unpaired)"
    return "-"


MDE_NOTE = ("MDE: the smallest paired change this number of problems detects at 80 % power, two-sided 5 % "
            "(2.80 x SE; 300/n points when no problem differs).")


def _mde(new: dict, old: dict, column: str) -> str:
    """The minimum detectable effect of the paired `new - old`, in points; `-` when unpaired."""
    paired = paired_change(old, new, column)
    if paired is None:
        return "-"
    return f"{100 * min_detectable_effect(paired['se'], paired['problems']):.1f}"


def results_table(runs: list[dict]) -> str:
    """Rows: base model then each run's final model; columns: accuracy metrics; the MDE of and the
    change vs base. The MDE sits before the change so that the change stays the last column."""
    base, rows = _rows(runs)
    if not rows:
        return "_no evaluations found_\n"
    cols = metric_columns(rows[0][1])
    head = "| method | " + " | ".join(cols) + " | MDE (80 % power) | Δ " + cols[0] + " vs base (paired) |"
    lines = [head, "|---" * (len(cols) + 3) + "|"]
    for name, summary in rows:
        cells = [fmt(summary.get(c)) for c in cols]
        vs_base = base and name != "base"
        delta = _change(summary, base, cols[0]) if vs_base else "-"
        mde = _mde(summary, base, cols[0]) if vs_base else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mde} | {delta} |")
    problems = rows[0][1].get("problems")
    return (f"Held-out problems: {problems}; accuracy in %, mean ± standard error over problems "
            "([± x]: REDI's error bar over the k sampled runs). Changes are means of per-problem "
            f"differences ± their standard error. {MDE_NOTE}\n\n" + "\n".join(lines) + "\n")


def pairwise_table(runs: list[dict]) -> str:
    """Every trained run against every other on the first metric: row minus column, paired.

    Two methods evaluated on the same problems differ by far less noise than their two error bars
    suggest; this is the table that says whether one beat the other."""
    _, rows = _rows(runs)
    rows = [(n, s) for n, s in rows if n != "base"]
    if len(rows) < 2:
        return ""
    col = metric_columns(rows[0][1])[0]
    lines = [f"Δ {col} (row − column), points, mean ± SE of per-problem differences:", "",
             "| run | " + " | ".join(n for n, _ in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for name, summary in rows:
        cells = ["·" if other is summary else _change(summary, other, col) for _, other in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"MDE (80 % power) of each Δ {col} above, points:", "",
              "| run | " + " | ".join(n for n, _ in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for name, summary in rows:
        cells = ["·" if other is summary else _mde(summary, other, col) for _, other in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", MDE_NOTE]) + "\n"


CURVES = ["loss", "kl/mean", "kl/correct", "kl/incorrect", "rollout/pass_rate", "rollout/response_len",
          "grad_norm", "lr"]


def plot_curves(runs: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k for r in runs for m in r["metrics"] for k, v in m.items()
                    if isinstance(v, (int, float)) and k != "step"},
                   key=lambda k: (CURVES.index(k) if k in CURVES else len(CURVES), k))
    paths = []
    for name in names:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        drawn = False
        for r in runs:
            pts = [(m["step"], m[name]) for m in r["metrics"]
                   if isinstance(m.get(name), (int, float)) and not math.isnan(m[name])]
            if pts:
                ax.plot(*zip(*pts), label=r["name"], marker="." if len(pts) < 40 else None)
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / (name.replace("/", "_") + ".png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def build_report(run_dirs: list[Path], out_dir: Path, title: str = "trajdistill report") -> Path:
    runs = [load_run(p) for p in run_dirs]
    out_dir = Path(out_dir)
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_curves(runs, plots_dir)
    diffs = config_differences(runs)
    md = [f"# {title}", "", "## Held-out results", "", results_table(runs)]
    pairwise = pairwise_table(runs)
    if pairwise:
        md += ["## Paired differences between runs", "", pairwise]
    md += ["## Configuration differences", ""]
    if diffs:
        md.append("| field | " + " | ".join(r["name"] for r in runs) + " |")
        md.append("|---" * (len(runs) + 1) + "|")
        md += [f"| `{k}` | " + " | ".join(f"`{v}`" for v in vals) + " |" for k, vals in diffs]
    else:
        md.append("_identical configurations_")
    md += ["", "## Training curves", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots]
    text = "\n".join(md) + "\n"
    atomic_write_text(out_dir / "report.md", text)
    atomic_write_text(out_dir / "report.html", markdown_to_html(text, title))
    return out_dir / "report.md"


def markdown_to_html(text: str, title: str) -> str:
    """Just enough Markdown (headings, tables, images, paragraphs) for the report page."""
    body, table = [], []

    def flush_table():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[html.escape(c.strip()) for c in r.strip().strip("|").split("|")] for r in rows]
            out = ["<table>", "<tr>" + "".join(f"<th>{c}</th>" for c in cells[0]) + "</tr>"]
            out += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:]]
            body.append("\n".join(out + ["</table>"]))
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<img alt="{html.escape(alt)}" src="{html.escape(src.rstrip(")"))}">')
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}img{max-width:48%;margin:4px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
