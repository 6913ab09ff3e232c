"""Teacher traces for offline distillation (REDI; docs/methods.md): generate, pair, import.

    problems --teacher samples n traces--> verify --> traces (prompt, completion, correct, length)
    traces --first correct + first incorrect per problem, length filters--> pairs (prompt/chosen/rejected)
    traces --every correct trace--> SFT set (prompt/completion)

Rows follow Hugging Face conventions, so `datasets.load_dataset("json"/"parquet", ...)` and TRL read
them directly. `prompt` is the *student's* user turn (problem + answer instruction); the trainer
renders it with the model's chat template. A privileged teacher (problem + reference solution)
only changes what the teacher saw while sampling (`context` column), never the training prompt.

Generation is resumable: problems are sampled in chunks, and each finished chunk is written as one
file by an atomic rename. A restarted run reads the chunk files, skips every problem id already
there and samples the rest, so rows are never duplicated or lost; `traces.jsonl` / `traces.parquet`
are rebuilt from the chunks at the end.

The steps live in `trace_generation` (sampling), `trace_pairs` (pairs and the SFT set),
`trace_import` (external trace sets) and `trace_files` (reading and writing row sets).
"""

from trajdistill.data.trace_files import (PAIR_COLUMNS, SFT_COLUMNS, TRACE_COLUMNS, Column, completed_rows,
                                          read_rows, write_rows)
from trajdistill.data.trace_generation import (TraceSettings, generate_traces, sample_chunk, student_text,
                                               trace_summary)
from trajdistill.data.trace_import import GenerationFields, import_generations
from trajdistill.data.trace_pairs import PairFilter, build_pairs, fill_lengths

__all__ = ["PAIR_COLUMNS", "SFT_COLUMNS", "TRACE_COLUMNS", "Column", "GenerationFields", "PairFilter",
           "TraceSettings", "build_pairs", "completed_rows", "fill_lengths", "generate_traces",
           "import_generations", "read_rows", "sample_chunk", "student_text", "trace_summary", "write_rows"]
