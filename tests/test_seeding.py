"""Seeds and generators: derived seeds are stable; the deterministic-kernels context sets and restores torch's flags."""

from __future__ import annotations

import torch

from medrobust.seeding import derive_seed, deterministic_algorithms, make_generator


def test_derived_seeds_are_stable_and_key_dependent():
    assert derive_seed(0, "a", 1) == derive_seed(0, "a", 1)
    assert derive_seed(0, "a", 1) != derive_seed(0, "a", 2) != derive_seed(1, "a", 1)
    assert 0 <= derive_seed(123, "model", "pgd") < 2**63
    a = torch.rand(4, generator=make_generator(5, "cell"))
    b = torch.rand(4, generator=make_generator(5, "cell"))
    assert torch.equal(a, b)


def test_deterministic_kernels_are_selected_for_cuda_and_restored():
    cudnn = torch.backends.cudnn
    before = (cudnn.deterministic, cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    cudnn.benchmark = True
    try:
        # setting the flags needs no GPU, so this runs everywhere
        with deterministic_algorithms("cuda"):
            assert cudnn.deterministic and not cudnn.benchmark
            assert torch.are_deterministic_algorithms_enabled()
            assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert cudnn.benchmark and cudnn.deterministic == before[0]
        assert torch.are_deterministic_algorithms_enabled() == before[2]
        # a CPU device or enabled=False leaves everything alone
        for ctx in (deterministic_algorithms("cpu"), deterministic_algorithms("cuda", enabled=False)):
            with ctx:
                assert cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    finally:
        cudnn.deterministic, cudnn.benchmark = before[0], before[1]
