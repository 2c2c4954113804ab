"""`asapbench models` and `asapbench info`: what is registered, and what a configuration costs."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer


def model_table(include_tiny: bool = False) -> list[dict[str, Any]]:
    """One row per registered model: name, presets, default preset, params of the default preset."""
    import torch

    from asapbench.counting import count_params
    from asapbench.registry import create_generator, list_models

    rows = []
    for m in list_models(include_tiny=include_tiny):
        with torch.device("meta"):
            g = create_generator(m["name"], m["default_preset"])
        rows.append({**m, "params": count_params(g)})
    return rows


def model_info(model: str, preset: str | None = None, res: str | None = None, batch: int = 1) -> dict[str, Any]:
    """Params, MACs (total and per stream/stage) and, for ASAP-Net, its geometry at a resolution.

    Without ``preset``, a given ``res`` configures the model as the paper does for that resolution
    (ASAP-Net: S = H/16); without ``res``, the preset's own resolution is used.
    """
    from asapbench.bounds import check
    from asapbench.counting import count_macs
    from asapbench.registry import build_for_resolution, get_preset
    from asapbench.resolution import parse_resolution

    check("--batch", batch)
    if res is not None:
        height, width = parse_resolution(res)
    else:
        preset = get_preset(model, preset).name
        height, width = get_preset(model, preset).resolution
    g = build_for_resolution(model, height, width, preset, device="meta")
    counts = count_macs(g, height, width, batch=batch)
    info: dict[str, Any] = {
        "model": model,
        "preset": g.preset,
        "overrides": dict(g.overrides),
        "height": height,
        "width": width,
        "batch": batch,
        "input_nc": g.input_nc,
        "params": counts["params"],
        "macs": counts["macs"],
        "gmacs": round(counts["macs"] / 1e9, 3),
        "stages": counts["stages"],
        "convention": counts["convention"],
    }
    if "streams" in counts:
        info["streams"] = counts["streams"]
    if hasattr(g, "geometry"):
        info["geometry"] = g.geometry(height, width)
    return info


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models_cmd(
        tiny: Annotated[bool, typer.Option("--tiny", metavar="", help="Also list the tiny test variants.")] = False,
        as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """List the registered generators, their presets and parameter counts."""
        rows = model_table(include_tiny=tiny)
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        t = Table(title="asapbench generators")
        for col in ("name", "presets (default first)", "params", "description"):
            t.add_column(col, justify="right" if col == "params" else "left")
        for r in rows:
            presets = [r["default_preset"]] + [p for p in r["presets"] if p != r["default_preset"]]
            t.add_row(r["name"], ", ".join(presets), _fmt_int(r["params"]), r["description"])
        Console().print(t)

    @app.command("info")
    def info_cmd(
        model: Annotated[str, typer.Option("--model", "-m", metavar="NAME", help="Registered model name (see `asapbench models`).")],
        preset: Annotated[Optional[str], typer.Option("--preset", "-p", metavar="NAME", help="Preset (default: the paper's configuration for --res, else the model's default).")] = None,
        res: Annotated[Optional[str], typer.Option("--res", "-r", metavar="RES", help="Resolution: 1024 (square) or HxW such as 256x512. Default: the preset's.")] = None,
        batch: Annotated[int, typer.Option("--batch", metavar="N", help="Batch size for the MAC count.")] = 1,
        as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print one JSON object.")] = False,
    ) -> None:
        """Params and MACs of a model at a resolution (and ASAP-Net's S1, S2, grid, tile, positional channels)."""
        info = model_info(model, preset, res, batch)
        if as_json:
            print(json.dumps(info))
            return
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"{info['model']} ({info['preset']}) at {info['height']}x{info['width']}, batch {info['batch']}", show_header=False)
        t.add_column("what")
        t.add_column("value", justify="right")
        if info["overrides"]:
            t.add_row("configured for resolution", ", ".join(f"{k}={v}" for k, v in info["overrides"].items()))
        t.add_row("input channels", str(info["input_nc"]))
        t.add_row("params", _fmt_int(info["params"]))
        t.add_row("MACs (total)", f"{info['macs'] / 1e9:,.3f} G")
        for name, v in info.get("streams", {}).items():
            t.add_row(f"  {name} stream", f"{v / 1e9:,.3f} G")
        if "streams" not in info:
            for name, v in info["stages"].items():
                t.add_row(f"  {name}", f"{v / 1e9:,.3f} G")
        geo = info.get("geometry")
        if geo:
            t.add_row("S (tile) = S1 x S2", f"{geo['S']} = {geo['S1']} x {geo['S2']}")
            t.add_row("low-res input", "x".join(map(str, geo["lr_input"])))
            t.add_row("parameter grid", "x".join(map(str, geo["grid"])))
            t.add_row("tile", "x".join(map(str, geo["tile"])))
            t.add_row("positional channels", str(geo["pe_channels"]))
            t.add_row("MLP widths", "-".join(map(str, geo["mlp_channels"])))
            t.add_row("params per MLP", _fmt_int(geo["mlp_params"]))
        Console().print(t)
        Console().print(f"[dim]{info['convention']}[/dim]")

