"""Zero-shot commonsense suites (and 5-shot MMLU) through lm-eval-harness.

``lola-bench commonsense`` hands an already-built transformers causal LM (possibly
with LoLA attention patched in) to lm-eval's ``HFLM`` and runs lm-eval's own
evaluator on: piqa, arc_easy, arc_challenge, hellaswag, winogrande, and on
request mmlu. Scoring, batching and metric code are lm-eval's; this module only
picks the task definitions, runs them one at a time (for progress reporting),
and flattens the results into a tidy table.

Online vs offline
-----------------
* No data directory (argument ``data_dir`` is None and ``$LOLA_BENCH_DATA`` is
  unset): lm-eval's official task names are used unchanged and lm-eval fetches
  the Hugging Face datasets itself.
* With a data directory: the local ``lola_<task>`` definitions in
  ``lola_bench/evals/commonsense/task_yamls/`` are used instead. They read the staged files
  (see ``/work/shared/data/SOURCES.md`` for provenance) through
  ``task_yamls/utils.py`` and copy the official lm-eval 0.4.13 prompts,
  choices, targets and metrics. The data directory reaches the loaders as task
  metadata (``TaskManager(metadata={"data_dir": ...})``), so it works from any
  working directory, and ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` are forced on
  for the duration of the run. Results are reported under the canonical names
  (``piqa``, not ``lola_piqa``).

Caveats of the offline data
---------------------------
* hellaswag: the original ``hellaswag_val.jsonl`` is not available offline, so
  all 10042 validation items come from llama.cpp's preprocessed text form.
  Its context/ending preprocessing differs slightly from lm-eval's (the
  ActivityNet ``ctx_b`` capitalisation is restored by the loader, but WikiHow
  endings that lm-eval leaves with a leading space have none here), so scores
  are close to, but not identical with, official ``hellaswag`` numbers.
  Details in ``task_yamls/lola_hellaswag.yaml``.
* Only evaluation splits are staged (plus MMLU's ``dev``), so with
  ``num_fewshot > 0`` the non-MMLU tasks draw their examples from the evaluation
  split itself (lm-eval skips the document being scored); upstream uses train.
* ``limit`` applies per lm-eval task; for mmlu that is per subject (57 of them).
"""

from .harness import run_commonsense
from .lengths import beyond_exact_shares, length_table, request_lengths
from .tasks import (
                    DATA_ENV_VAR,
                    DEFAULT_NUM_FEWSHOT,
                    DEFAULT_TASKS,
                    FEWSHOT_SEED,
                    KNOWN_TASKS,
                    LOCAL_PREFIX,
                    LOCAL_TASKS_DIR,
                    METRICS,
                    MMLU_SUBJECTS,
                    OFFICIAL_DOC_COUNTS,
                    canonical_name,
                    local_data_dir,
                    offline_mode,
                    required_files,
                    resolve_tasks,
)

__all__ = ["DATA_ENV_VAR", "DEFAULT_NUM_FEWSHOT", "DEFAULT_TASKS", "FEWSHOT_SEED", "KNOWN_TASKS", "LOCAL_PREFIX",
           "LOCAL_TASKS_DIR", "METRICS", "MMLU_SUBJECTS", "OFFICIAL_DOC_COUNTS", "beyond_exact_shares",
           "canonical_name", "length_table", "local_data_dir", "offline_mode", "request_lengths", "required_files",
           "resolve_tasks", "run_commonsense"]
