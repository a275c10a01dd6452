"""How many facts can one MLP layer of a sandbox take in one MEMIT batch? The key space, per layer.

    python -m bench.sandbox_keys [--model DIR] [--records 1000] [--n 999] [--out bench/results/sandbox_keys.json]

MEMIT maps the batch's keys K (d_k x n, the input of the MLP output matrix at each subject's last token)
to new outputs with one update ΔW. ΔW K = R has an exact solution for every R only when the n keys are
linearly independent, so the rank of K bounds how many edits one layer can realise at once; keys that
share units also interfere through C. For the first ``--n`` CounterFact requests (the ``bench.quality``
order, each subject once) and every layer, this reports:

* ``rank``: singular values above 1e-3 of the largest; ``dims_99``: directions holding 99 % of the energy;
* ``active_units``: mean units per key above 5 % of that key's largest unit; ``units_used``: units above
  that level in any key (the rest are never used by these subjects);
* ``mean_abs_cos``: mean |cosine| between two different subjects' keys;
* ``fit_random``: the share of the batch a least-squares ΔW realises for random targets,
  1 - ‖R - ΔW K‖² / ‖R‖² with ΔW = R K⁺ over the same directions as ``rank`` (1.0 when the keys are
  independent).
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import _common as C


def describe(K, seed: int = 0) -> dict:
    """Key-space figures of an (n, d_k) key matrix (see the module docstring)."""
    import torch

    K64 = K.double()
    n, d_k = K64.shape
    s = torch.linalg.svdvals(K64)
    energy = torch.cumsum(s**2, 0) / (s**2).sum()
    rank = int((s > 1e-3 * s[0]).sum())
    dims_99 = int((energy < 0.99).sum()) + 1
    peak = K64.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    on = K64.abs() > 0.05 * peak
    unit = K64 / K64.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = unit @ unit.T
    off = cos[~torch.eye(n, dtype=torch.bool)].abs()
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(n, 64, generator=g, dtype=torch.float64)  # targets: any d works, the share does not depend on it
    fitted = K64 @ (torch.linalg.pinv(K64, rtol=1e-3) @ R)  # rows: ΔW k_i for ΔW = Rᵀ (K⁺)ᵀ
    fit = 1.0 - float(((R - fitted) ** 2).sum() / (R**2).sum())
    return {"keys": n, "d_k": d_k, "rank": rank, "dims_99": dims_99,
            "active_units": round(float(on.sum(1).double().mean()), 1), "units_used": int(on.any(0).sum()),
            "mean_abs_cos": round(float(off.mean()), 4) if n > 1 else None, "fit_random": round(fit, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=999, help="requests (distinct subjects) whose keys are taken")
    C.add_common_args(ap, C.RESULTS / "sandbox_keys.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from editing import modeldir
    from editing.arch import n_layers, spec_for
    from editing.targets import keys

    torch.set_num_threads(args.threads)
    model_dir = C.resolve_model(args)
    model, tok = modeldir.load(model_dir, args.device)
    rs = C.load_requests(args.data, args.records, model_dir, args.seed)
    seen, reqs = set(), []
    for r in rs.requests:
        if r.subject not in seen:
            seen.add(r.subject)
            reqs.append(r)
    reqs = reqs[:args.n]
    if len(reqs) < 2:
        C.die(f"need at least 2 requests with distinct subjects, found {len(reqs)}")
    spec = spec_for(model)
    rows = []
    for layer in range(n_layers(model)):
        K = keys(model, tok, spec.mlp_out_at(layer), reqs, ["{}"])
        rows.append({"case": f"layer-{layer}", "layer": layer, **describe(K, args.seed)})
    from editing import delta as D

    m = C.meta(args, C.command_line("bench.sandbox_keys"), {
        "model": str(model_dir), "model_sha256": D.weights_sha256(model), "records": args.records,
        "seed": args.seed, "requests": rs.describe(), "distinct_subjects": len(reqs)})
    C.write_results(args.out, m, rows, [r["case"] for r in rows])
    C.table(rows, [("case", "layer", ""), ("keys", "keys", "n"), ("d_k", "d_k", "n"), ("rank", "rank", "n"),
                   ("dims_99", "99 % energy", "n"), ("active_units", "active units", ""),
                   ("units_used", "units used", "n"), ("mean_abs_cos", "mean |cos|", ""),
                   ("fit_random", "fit (random R)", "%")])
    print(f"model: {model_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
