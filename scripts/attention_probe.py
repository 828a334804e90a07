"""Where does a late query's attention go, and what does LoLA do with it? Two probes on the embedded model.

  sinks      full (eager) attention at --ctx tokens on a passkey prompt, a niah_single_1 prompt and wiki text:
             per layer, the attention mass the last 64 queries put on keys older than 128 tokens, and the
             keys that receive most of it (the attention sinks).
  lola-mass  LoLA prefill of passkey prompts at --ctx with a checkpoint: per layer, at the last prompt position,
             the true softmax mass (from LoLA's own q, k) on the folded keys, on the sparse cache and on the
             window, next to the weight LoLA's combine gives the linear memory, and the greedy next token.

Writes <out>/<probe>.md (+ .json) with provenance. usage:
  python scripts/attention_probe.py sinks --ctx 1024 --out results/diagnostics
  python scripts/attention_probe.py lola-mass --ctx 4096 --samples 0,19 --lola-ckpt PATH --out results/diagnostics
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lola_bench.paths import data_dir  # noqa: E402
from lola_bench.provenance import provenance  # noqa: E402


def _texts(tok, ctx: int) -> dict[str, list[int]]:
    from lola_bench.evals.ruler import generate_samples

    out = {task: generate_samples(task, tok, ctx, 1, 0)[0].input_ids for task in ("passkey", "niah_single_1")}
    root = data_dir(None)
    wiki = root / "text" / "wiki_demo.txt" if root else None
    if wiki is not None and wiki.is_file():
        out["wiki_demo"] = tok(wiki.read_text()[20000:20000 + 12 * ctx])["input_ids"][:ctx]
    return out


def probe_sinks(lm, ctx: int) -> tuple[list[dict], list[str]]:
    tok, model = lm.tokenizer, lm.model
    model.config._attn_implementation = "eager"
    rows, lines = [], []
    for name, ids in _texts(tok, ctx).items():
        with torch.no_grad():
            att = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions
        lines += ["", f"### {name} ({len(ids)} tokens; first tokens {[tok.decode([t]) for t in ids[:4]]})", "",
                  "| layer | far mass | top keys (position: mass, token) |", "|---|---|---|"]
        for li, a in enumerate(att):
            m = a[0, :, -64:, :-128].float().mean(dim=(0, 1))
            top = m.topk(3)
            keys = [(int(i), float(v), tok.decode([ids[int(i)]])) for v, i in zip(top.values, top.indices)]
            rows.append({"text": name, "layer": li, "far_mass": float(m.sum()), "top": keys})
            lines.append(f"| {li} | {float(m.sum()):.2f} | " + ", ".join(f"{i}: {v:.2f} {t!r}" for i, v, t in keys)
                         + " |")
    return rows, lines


def probe_lola_mass(lm, ctx: int, samples: list[int], ckpt: str | None, sinks: int | None):
    import lola_bench.attention.common as common
    from lola_bench.attention.config import LolaConfig
    from lola_bench.evals.ruler import generate_samples
    from lola_bench.models import patch as P
    from lola_bench.models.checkpoint import read_meta
    from lola_bench.models.variants import apply_attention
    from lola_bench.settings import AttentionSettings

    tok, model = lm.tokenizer, lm.model
    meta = read_meta(ckpt) if ckpt else {}
    cfg = LolaConfig(window=64, sparse=512, feature_map="hedgehog" if ckpt else "hedgehog-identity",
                     combine=meta.get("combine", "calibrated"),
                     sinks=sinks if sinks is not None else int(meta.get("sinks") or 0))
    apply_attention(model, AttentionSettings("lola", cfg), ckpt)
    cur, lin_frac, qk = {}, {}, {}
    orig_combine, orig_project = common.combine, P.LolaAttention.project

    def combine(params, sm_num, sm_den, lin_num, lin_den, sm_max):
        if lin_num is not None and params.cfg.combine == "calibrated":
            f = params.window_factors.to(sm_den.dtype).view(1, -1, 1)
            w = torch.exp((f - sm_max).clamp(max=80.0))
            lin_frac[cur["layer"]] = (w * lin_den / (sm_den + w * lin_den))[0, :, -1].clone()
        return orig_combine(params, sm_num, sm_den, lin_num, lin_den, sm_max)

    def project(self, h, pe):
        q, k, v = orig_project(self, h, pe)
        cur["layer"] = self.layer_idx
        qk[self.layer_idx] = (q[0, :, -1].float().clone(), k[0].float().clone())
        return q, k, v

    common.combine, P.LolaAttention.project = combine, project
    rows, lines = [], [f"LoLA config: {cfg.to_dict()}; checkpoint {ckpt}"]
    try:
        all_samples = generate_samples("passkey", tok, ctx, max(samples) + 1, 0)
        for i in samples:
            s = all_samples[i]
            lin_frac.clear()
            qk.clear()
            cache = P.new_cache(model)
            with torch.no_grad():
                nxt = model(input_ids=torch.tensor([s.input_ids]), past_key_values=cache, use_cache=True
                            ).logits[0, -1].argmax().item()
            L = len(s.input_ids)
            lines += ["", f"### sample {i}: depth {s.depth:.0f}%, {L} tokens, answer {s.answers[0]}, greedy next "
                      f"token {tok.decode([nxt])!r}", "",
                      "| layer | true mass folded | LoLA linear weight | true mass sparse | true mass window | "
                      "true mass on position 0 |", "|---|---|---|---|---|---|"]
            for li in sorted(qk):
                q, k = qk[li]
                g = q.shape[0] // k.shape[0]
                st = cache.state(li)
                p = (torch.einsum("hd,hld->hl", q, k.repeat_interleave(g, 0)) / math.sqrt(q.shape[-1])).softmax(-1)
                win = torch.zeros(L, dtype=torch.bool)
                win[st.win_pos[(st.win_pos >= 0) & (st.win_pos < L)]] = True
                tf = ts = 0.0
                for h in range(q.shape[0]):
                    sp = torch.zeros(L, dtype=torch.bool)
                    pos = st.sp_pos[0, h // g]
                    sp[pos[pos >= 0]] = True
                    sp &= ~win
                    ts += float(p[h][sp].sum()) / q.shape[0]
                    tf += float(p[h][~sp & ~win].sum()) / q.shape[0]
                tw = float(p[:, win].sum(-1).mean())
                lf = float(lin_frac[li].mean()) if li in lin_frac else float("nan")
                rows.append({"sample": i, "layer": li, "true_folded": tf, "lola_linear_weight": lf, "true_sparse": ts,
                             "true_window": tw, "true_pos0": float(p[:, 0].mean())})
                lines.append(f"| {li} | {tf:.3f} | {lf:.3f} | {ts:.3f} | {tw:.3f} | {float(p[:, 0].mean()):.3f} |")
    finally:
        common.combine, P.LolaAttention.project = orig_combine, orig_project
    return rows, lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("probe", choices=["sinks", "lola-mass"])
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--samples", default="0", help="lola-mass: comma-separated passkey sample indices (seed 0)")
    ap.add_argument("--lola-ckpt", default=None, help="lola-mass: checkpoint (default: the shipped one)")
    ap.add_argument("--sinks", type=int, default=None, help="lola-mass: override the checkpoint's sinks")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(REPO / "results" / "diagnostics"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from lola_bench.models.checkpoint import shipped_checkpoint
    from lola_bench.models.loading import load_model

    lm = load_model("smollm2-135m", "cpu", "float32")
    if args.probe == "sinks":
        rows, lines = probe_sinks(lm, args.ctx)
        title = f"Attention sinks of {lm.source}, full attention, {args.ctx} tokens"
        stem = f"sinks-{args.ctx}"
    else:
        ckpt = str(args.lola_ckpt or shipped_checkpoint("smollm2-135m"))
        samples = [int(x) for x in args.samples.split(",")]
        rows, lines = probe_lola_mass(lm, args.ctx, samples, ckpt, args.sinks)
        title = f"Where LoLA's last-position attention goes, passkey {args.ctx}"
        stem = f"lola-mass-{args.ctx}-{Path(ckpt).name}" + (f"-sinks{args.sinks}" if args.sinks is not None else "")
    prov = provenance("cpu")
    prov["command"] = "python scripts/attention_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"rows": rows, "provenance": prov}, indent=1) + "\n")
    (out / f"{stem}.md").write_text(f"# {title}\n\n`{prov['command']}` (commit {prov['git'].get('commit', '?')[:12]}, "
                                    f"{prov['utc_time']})\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
