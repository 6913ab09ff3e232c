from trajdistill.losses.logprobs import per_sequence_sum, token_logprobs  # noqa: F401
