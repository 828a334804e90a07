"""One-call GPU benchmark of the LoLA Triton kernels (how to run: scripts/README.md).

Sections, in this order (results are written after each one, so a run cut short keeps what it did; items
that would overrun --budget-s are recorded as skipped):
  correctness       each kernel against the torch path / the quadratic reference on the same device
                    (bf16 on a GPU, plus float32 where the torch fast path can run)
  decode_attention  attention-side decode us/token for 16 layers of the llama-3.2-1b shape at 4K/32K/128K
                    contexts, from synthetic LolaStates of the right size: LoLA full step (eager: append +
                    chunk-boundary merge + kernel), LoLA kernel alone (eager and CUDA graph), the torch
                    ``attend`` (eager), and full attention over a KV cache of the context (SDPA, eager, graph)
  merge_tiles       the merge kernel (phase A of a lambda > 0 prefill) per tile setting ($LOLA_MERGE_TILES)
  ttft              time to first token of the whole random-weight model (llama-3.2-1b, llama-3.1-8b, bf16):
                    full attention (SDPA, cuDNN backend when it runs; the backend that ran is recorded) vs
                    LoLA (window 64, lambda 0 and 512) through the Triton kernels; peak VRAM per run
  decode_model      whole-model decode ms/token continuing the TTFT prompt (4K and 32K), eager, and with a
                    static cache and one decode step replayed as a CUDA graph (lola_bench.evals.graphed_decode:
                    full attention with a StaticCache, LoLA with static-capacity states and eager chunk-boundary
                    merges; bytes read per token, achieved GB/s against the device's peak)
Writes <out>/<device>.json and <out>/<device>.md with provenance.

``--smoke`` runs every section with tiny shapes (CPU, float32; Triton through TRITON_INTERPRET=1, or the
torch path when Triton cannot run) so the script itself can be tested without a GPU.
"""
