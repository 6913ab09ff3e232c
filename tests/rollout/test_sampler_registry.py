"""Sampler backends register like methods: `sampling.backend` validates against the registry, and
the trainer's, `eval`'s and `traces generate`'s sampler comes from the registered factory."""

import pytest

from trajdistill import UserError
from trajdistill.config import load_config
from trajdistill.rollout.sampler import make_sampler, register_sampler, sampler_for, sampler_names, unregister_sampler


class Recorder:
    def __init__(self, model, tokenizer, **options):
        self.model, self.tokenizer, self.options = model, tokenizer, options


@pytest.fixture()
def echo_backend():
    register_sampler("echo", Recorder)
    yield
    unregister_sampler("echo")


def test_the_builtin_backends_are_registered():
    assert {"native", "hf", "vllm"} <= set(sampler_names())


def test_a_registered_backend_is_accepted_by_the_config_and_built_by_its_factory(echo_backend):
    cfg = load_config(None, ["sampling.backend=echo", "sampling.batch_size=7", "speed.packed_linear=off"])
    sampler = sampler_for(cfg.sampling, "MODEL", "TOK", packed=cfg.speed.packed_linear)
    assert isinstance(sampler, Recorder) and (sampler.model, sampler.tokenizer) == ("MODEL", "TOK")
    assert sampler.options == {"batch_size": 7, "progress": False, "context": None, "packed": "off", "options": None}


def test_an_unknown_backend_lists_the_registered_ones(echo_backend):
    with pytest.raises(UserError, match=r"field 'sampling.backend': unknown sampling backend 'ecko' "
                                        r"\(choose one of: echo, hf, native, vllm\)"):
        load_config(None, ["sampling.backend=ecko"])
    with pytest.raises(UserError, match="unknown sampling backend 'ecko'"):
        make_sampler("ecko", None, None)


def test_an_unregistered_backend_is_refused_again():
    register_sampler("echo", Recorder)
    unregister_sampler("echo")
    with pytest.raises(UserError, match="field 'sampling.backend'"):
        load_config(None, ["sampling.backend=echo"])
