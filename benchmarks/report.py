"""`pocketswap bench report`: one self-contained HTML page from result files (no server, images inlined).

Inputs are classified by content: PNG/JPEG images (dataset previews, sample swaps), JSON results
with a ``kind`` (latency, pipeline, roofline, device, eval/quality), artifact manifests, dataset
manifests, demo summaries, and training logs (``metrics.jsonl``). Plots are drawn with matplotlib
and embedded as base64 PNGs, so the page opens from disk in any browser.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from pocketswap import __version__
from pocketswap.benchmarks.results import PIPELINE_STAGES, check_result
from pocketswap.core.errors import PocketswapError
from pocketswap.core.files import atomic_write_bytes
from pocketswap.core.jsonio import read_json
from pocketswap.distill.logs import read_metrics

log = logging.getLogger(__name__)

NOTICE = "Face swaps on this page are synthetic media, made from public-domain sample photos."
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{display:block;overflow-x:auto;border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem} td,th{border:1px solid #ccc;padding:.25rem .5rem}
th{background:#f3f3f3;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #ddd} figure{margin:1rem 0} figcaption{color:#555;font-size:.85rem}
.notice{background:#fff4e5;border:1px solid #f0c36d;padding:.5rem .8rem;border-radius:4px}
.muted{color:#666;font-size:.85rem}
"""


def _data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png).decode()}"


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _img(png: bytes, caption: str, mime: str = "image/png") -> str:
    return (
        f'<figure><img alt="{html.escape(caption)}" src="{_data_uri(png, mime)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "–"
    return html.escape(str(value))


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p class=muted>(no rows)</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if isinstance(r.get(c), int | float) else ""}">{_fmt(r.get(c))}</td>' for c in columns
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


# -- sections ---------------------------------------------------------------------------------------
def latency_section(records: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["artifact", "runtime", "precision", "preset", "threads", "median_ms", "p5_ms", "p95_ms", "init_ms",
               "size_mb", "peak_memory_mb", "fully_delegated"]  # fmt: skip
    for r in records:
        r["artifact"] = Path(r["artifact"]).name if "/" in r["artifact"] else r["artifact"]
    parts = [table(records, columns), speedup_table(records)]
    by_artifact = defaultdict(list)
    for r in records:
        by_artifact[(r["artifact"], r["runtime"])].append(r)
    if any(len(v) > 1 for v in by_artifact.values()):
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for (name, runtime), rows in by_artifact.items():
            rows = sorted(rows, key=lambda r: r["threads"])
            ax.plot(
                [r["threads"] for r in rows], [r["median_ms"] for r in rows], marker="o", label=f"{name} ({runtime})"
            )
        ax.set_xlabel("threads"), ax.set_ylabel("median latency (ms)"), ax.set_yscale("log")
        ax.set_title("Latency vs threads"), ax.grid(alpha=0.3), ax.legend(fontsize=7)
        parts.append(_img(_figure_png(fig), "Median latency against thread count (log scale)."))
    single = [r for r in records if r["threads"] == min(x["threads"] for x in records)]
    labelled = [r for r in single if not r["artifact"].startswith("ref:") and (r.get("precision") or r.get("preset"))]
    if len(labelled) > 1:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        labels = [f"{r.get('preset') or ''} {r.get('precision') or ''}\n{r['runtime']}" for r in labelled]
        ax.bar(range(len(labelled)), [r["median_ms"] for r in labelled], color="#4c78a8")
        ax.set_xticks(range(len(labelled)), labels, fontsize=7, rotation=30, ha="right")
        (
            ax.set_ylabel("median latency (ms)"),
            ax.set_title(f"Latency by preset / precision / runtime ({single[0]['threads']} thread)"),
        )
        ax.grid(axis="y", alpha=0.3)
        parts.append(_img(_figure_png(fig), "Median latency per artifact at the lowest thread count."))
    return "".join(parts)


def speedup_table(records: list[dict]) -> str:
    """Reference latency / artifact latency at the same thread count (references were timed in the same run)."""
    refs = {(r["artifact"], r["threads"]): r["median_ms"] for r in records if r["artifact"].startswith("ref:")}
    rows = []
    for r in records:
        if r["artifact"].startswith("ref:"):
            continue
        row = {"artifact": r["artifact"], "runtime": r["runtime"], "threads": r["threads"], "median_ms": r["median_ms"]}
        for (name, threads), ms in refs.items():
            if threads == r["threads"]:
                row[f"speed-up vs {name[4:]}"] = round(ms / r["median_ms"], 1)
        rows.append(row)
    if not refs or not rows:
        return ""
    return "<p>Speed-up of each artifact over the reference networks (random weights, PyTorch eager):</p>" + table(rows)


def pipeline_section(records: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(PIPELINE_STAGES)
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(records)))
    left = [0.0] * len(records)
    for stage in stages:
        values = [r[stage] for r in records]
        ax.barh(range(len(records)), values, left=left, label=stage.removesuffix("_ms"))
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_yticks(range(len(records)), [f"{r['model']} ({r['threads']} thr)" for r in records], fontsize=8)
    ax.set_xlabel("ms per 640x480 frame"), ax.legend(fontsize=7, ncol=5), ax.grid(axis="x", alpha=0.3)
    columns = ["model", "threads", *stages, "track_ms", "total_ms", "fps_detecting", "fps_tracking"]
    return table(records, columns) + _img(
        _figure_png(fig), "Live pipeline time per stage (frames where the detector runs)."
    )


def roofline_section(records: list[dict]) -> str:
    """Pivot: one row per (preset, precision), one column of estimated ms per phone."""
    rows: dict[tuple, dict] = {}
    for r in records:
        key = (r["preset"], r["precision"])
        row = rows.setdefault(key, {"preset": r["preset"], "precision": r["precision"], "GMAC": r["gmac"],
                                    "MB moved": r["mbytes_moved"]})  # fmt: skip
        row[f"{r['phone']} (ms)"] = r["estimate_ms"]
    note = (
        "<p class=muted>Estimates (roofline lower bounds, one big core) from counted MACs and bytes moved; "
        "phone figures and their sources are in benchmarks/phones.yaml. Not measurements.</p>"
    )
    return note + table(list(rows.values()))


def quality_section(result: dict) -> str:
    """Student / teacher / unchanged-input columns of `distill eval` or `bench quality`."""
    rows = [{"system": name, **metrics} for name, metrics in result["metrics"].items()]
    facts = (
        f"{result.get('num_samples')} pairs, {result.get('num_identities')} identities, split '{result.get('split')}'"
    )
    notes = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in result.get("notes", {}).items()
    )
    return f"<p class=muted>{html.escape(facts)}</p>" + table(rows) + (f"<ul class=muted>{notes}</ul>" if notes else "")


def photos_section(result: dict, folder: Path) -> str:
    """`bench quality --people`: every axis for student | teacher | input, the video axis, the worst swaps."""
    from pocketswap.benchmarks.photos import METHODS, summary_rows

    rows = [{"axis": axis, "figure": label, **{m: result["summary"][m].get(key) for m in METHODS}}
            for axis, label, key in summary_rows(result)]  # fmt: skip
    where = f" in {result['folder']}" if result.get("folder") else ""
    facts = (f"{result['photos']} swaps of real photos of {len(result['people'])} people ({', '.join(result['people'])})"
             f"{where}; each identity given by one photo and judged against that person's other photos; ratios are "
             "swap / attribute photo in the same face region (1 = as the photo)")  # fmt: skip
    parts = [f"<p class=muted>{html.escape(facts)}</p>", table(rows)]
    video = result.get("video")
    if video:
        keys = ("flicker", "landmark_jitter", "identity_distance_mean", "identity_distance_std")
        parts.append(f"<p class=muted>Video {html.escape(str(video['source']))}: {video['frames']} frames through the "
                     f"live pipeline, identity {html.escape(video['identity'])}</p>")  # fmt: skip
        parts.append(table([{"figure": k.replace("_", " "), **{m: video[m].get(k) for m in METHODS}} for k in keys]))
    for field, images in (result.get("worst") or {}).items():
        for rank, name in enumerate(images):
            path = folder / name
            if path.is_file():
                caption = f"Student's worst {field.replace('_', ' ')} #{rank + 1}: attribute photo | teacher | student"
                parts.append(_img(path.read_bytes(), caption))
    return "".join(parts)


def curves_section(path: Path) -> str:
    """Training losses (rows with kind "train") and validation loss and face PSNR (kind "val")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(path)  # a last line cut by a kill is skipped (and said)
    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    if not train:
        return "<p class=muted>(no training rows)</p>"
    fig, (ax, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("total", "l1", "ssim", "id", "mask", "rec"):
        points = [(r["step"], r[key]) for r in train if _number(r.get(key))]
        if points:
            ax.plot(*zip(*points, strict=True), label=key, lw=1.0)
    (
        ax.set_xlabel("step"),
        ax.set_yscale("log"),
        ax.grid(alpha=0.3),
        ax.legend(fontsize=7),
        ax.set_title("Training losses"),
    )
    if val:
        points = [(r["step"], r["psnr_face"]) for r in val if _number(r.get("psnr_face"))]
        ax_val.plot([p[0] for p in points], [p[1] for p in points], "o-", label="val face PSNR (dB)")
        ax_val.set_xlabel("step"), ax_val.set_ylabel("dB"), ax_val.grid(alpha=0.3), ax_val.legend(fontsize=7)
        ax_val.set_title("Held-out identities")
    else:
        ax_val.axis("off")
    speed = [r["samples_per_s"] for r in train if _number(r.get("samples_per_s"))]
    facts = f"{train[-1]['step']} steps" + (f", {np.median(speed):.1f} samples/s (median)" if speed else "")
    return _img(_figure_png(fig), f"Training curves from {path.name}: {facts}.")


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def manifest_rows(manifests: list[dict]) -> str:
    rows = []
    for m in manifests:
        parity = m.get("parity") or {}
        worst = max((c.get("max_abs", 0.0) for c in parity.get("cases", [])), default=None)
        psnr = min((c.get("psnr_db", float("inf")) for c in parity.get("cases", [])), default=None)
        rows.append({
            "artifact": m.get("artifact"), "kind": m.get("kind"), "runtime": m.get("runtime"),
            "precision": m.get("precision"), "identity": m.get("identity_mode"), "preset": m.get("preset"),
            "size_kb": round(m.get("file_size_bytes", 0) / 1024, 1), "parity_max_abs": worst, "parity_min_psnr_db": psnr,
            "parity_passed": parity.get("passed"),
            "inputs": ", ".join(f"{t['name']}{t['shape']}" for t in m.get("inputs", [])),
        })  # fmt: skip
    return table(rows)


def _classify(path: Path) -> tuple[str, object]:
    if not path.exists():
        raise PocketswapError(f"{path}: no such result file")
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        from pocketswap.core.imageio import read_image

        read_image(path)  # an empty, truncated or foreign file is named here, not embedded as a broken image
        return "image", path.read_bytes()
    if path.name.endswith(".jsonl"):
        return "curves", path
    data = read_json(path, "result file", error=PocketswapError)
    if not isinstance(data, dict):
        return "json", data
    if data.get("format") in ("pocketswap-artifact", "pocketswap-paired-faces"):
        return check_result(data, "manifest" if data["format"] == "pocketswap-artifact" else "dataset", path), data
    if "mean_fps" in data and "stage_ms" in data:
        kind = "demo"
    elif isinstance(data.get("metrics"), dict) and ("student" in data["metrics"] or data.get("kind") == "eval"):
        kind = data.get("kind", "eval")
    else:
        kind = data.get("kind", "json")
    return check_result(data, kind, path), data


# Captions for the images the pipeline writes, by file-name pattern.
DEFAULT_CAPTIONS = {
    "preview.png": "Dataset preview: identity | attribute | teacher output | mask",
    "step-*.png": "Held-out pairs at the last validation: identity | attribute | teacher | student (pasted by its "
    "mask) | student mask",
    "compare.png": "Attribute faces held out of the personalisation: identity | attribute | teacher | universal "
    "student | personalised student (students pasted by their own masks, as the pipeline does)",
    "*_swapped.png": "Live-demo pipeline on a still photo (student artifact, paste-back, SYNTHETIC label)",
}


def _caption(path: Path, captions: dict[str, str]) -> str:
    if path.name in captions:
        return captions[path.name]
    for pattern, text in DEFAULT_CAPTIONS.items():
        if path.match(pattern):
            return f"{text} ({path.name})"
    return path.name


def build_report(
    paths: list[str | Path],
    title: str = "pocketswap report",
    captions: dict[str, str] | None = None,
    base: Path | None = None,
) -> str:
    """The HTML text of a report over `paths` (see module docstring for what is understood); ``base``: the
    report's folder, for relative links (a panel's rating page)."""
    captions = captions or {}
    sections: list[tuple[str, str]] = []
    manifests: list[dict] = []
    latency: list[dict] = []
    compares: list[dict] = []
    for raw in paths:
        path = Path(raw)
        kind, data = _classify(path)
        caption = _caption(path, captions)
        if kind == "image":
            mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
            sections.append((caption, _img(data, caption, mime)))
        elif kind == "curves":
            sections.append(("Training", curves_section(data)))
        elif kind == "manifest":
            manifests.append(data)
        elif kind == "latency":
            latency.extend(data["records"])
        elif kind == "pipeline":
            sections.append(("Live pipeline per stage", pipeline_section(data["records"])))
        elif kind == "roofline":
            sections.append(("Phone latency estimates (roofline)", roofline_section(data["records"])))
        elif kind == "device":
            sections.append(("On-device runs", table(data["records"])))
        elif kind in ("eval", "quality"):
            sections.append((f"Quality ({caption})", quality_section(data)))
        elif kind == "quality_photos":
            sections.append(("Quality on real photos", photos_section(data, path.parent)))
        elif kind == "dataset":
            summary = {k: data.get(k) for k in ("num_samples", "size", "seed", "version") if k in data}
            summary["teacher"] = (
                (data.get("teacher") or {}).get("name")
                if isinstance(data.get("teacher"), dict)
                else data.get("teacher")
            )
            summary["shards"] = len(data.get("shards", []))
            sections.append(("Dataset", table([summary])))
        elif kind in ("panel_key", "panel_scores"):
            from pocketswap.benchmarks.panel import report_section

            sections.append(report_section(data, path, base))
        elif kind == "face_compare":
            compares.append({k: data.get(k) for k in ("a", "b", "distance", "threshold", "verdict")})
        elif kind == "demo":
            row = {k: v for k, v in data.items() if not isinstance(v, dict)}
            row.update({f"{k} ms": v for k, v in data["stage_ms"].items()})
            sections.append(("Demo (headless run)", table([row])))
        else:
            sections.append((caption, f"<details><summary>{html.escape(caption)}</summary><pre>"
                                      f"{html.escape(json.dumps(data, indent=2)[:20000])}</pre></details>"))  # fmt: skip
    if compares:
        note = "<p class=muted>dlib cosine distance between the faces in two images (`pocketswap faces compare`).</p>"
        sections.append(("Identity checks", note + table(compares)))
    if latency:
        sections.append(("Latency", latency_section(latency)))
    if manifests:
        sections.append(("Artifacts", manifest_rows(manifests)))
    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(f"<h2>{html.escape(name)}</h2>{content}" for name, content in sections)
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p class=muted>pocketswap {__version__} · {created}</p><p class=notice>{NOTICE}</p>{body}</body></html>"
    )


def write_report(paths: list[str | Path], out: str | Path, title: str = "pocketswap report", **kwargs) -> Path:
    return atomic_write_bytes(out, build_report(paths, title, base=Path(out).parent, **kwargs).encode())
