"""The batched client pool trains the same deltas on CUDA as on the CPU (run with ``-m gpu``).

Both devices compute the same float32 math; only the order of reductions
differs (matrix products, the batched ridge solve, ``index_add_`` into the
float64 delta buffer). Such a difference is exactly as large as float32 rounding
makes it, so the test measures that rounding on this very computation: the
CPU's float32 deltas against a float64 reference of the same pool. A float32
evaluation in another reduction order has an error of the same size (the
summation and solve bounds depend on the problem's size and conditioning, not on
the order), so CUDA's float32 deltas must lie within ``SLACK`` times the CPU's
float32 error of the reference. A device path that drops, duplicates or
misplaces a rating is off by the size of a gradient, thousands of times more.

TF32 is assumed off (``torch.backends.cuda.matmul.allow_tf32``, PyTorch's
default): with it, products keep 10 mantissa bits and the bound does not hold.
"""

from __future__ import annotations

import pytest
import torch

from securefedrec import ExperimentConfig, Simulation
from securefedrec.data import synthetic
from securefedrec.models.mf import MF, Hyper, Layout
from securefedrec.models.pool import ClientPool, resolve_device

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

SLACK = 4.0
"""How many times the CPU's float32 rounding error CUDA's may be (another order, same size)."""


def _pools(device: torch.device) -> tuple[ClientPool, ClientPool, ClientPool, torch.Tensor]:
    """float32 pools on the CPU and on ``device``, a float64 CPU reference pool, a global vector."""
    ds = synthetic(300, 120, 25, seed=4)
    layout = Layout(ds.num_items, 16)
    model = MF(layout, Hyper(factors=16))

    def pool(dev: torch.device, dtype: torch.dtype) -> ClientPool:
        return ClientPool(ds.train, ds.num_users, model, device=dev, dtype=dtype)

    g = layout.init(3.5, 0.1, torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    return pool(cpu, torch.float32), pool(device, torch.float32), pool(cpu, torch.float64), g


def _compare(device: torch.device, epochs: int) -> tuple[float, float, float]:
    """(CPU float32 error, device float32 error, largest |delta|), errors against the float64 reference."""
    cpu32, dev32, ref64, g = _pools(device)
    clients = list(range(0, 300, 3))
    ref = ref64.train(clients, g, epochs, 0.05)
    on_cpu = cpu32.train(clients, g, epochs, 0.05)
    on_dev = dev32.train(clients, g, epochs, 0.05)
    assert on_dev.device.type == device.type and on_dev.dtype == torch.float64  # the buffer is float64
    err_cpu = float((on_cpu - ref).abs().max())
    err_dev = float((on_dev.cpu() - ref).abs().max())
    # the user state the pool keeps comes back to the host, from the device's solve
    p_cpu, p_dev, p_ref = (pool.local["user_factors"] for pool in (cpu32, dev32, ref64))
    err_p = float((p_cpu - p_ref.float()).abs().max())
    torch.testing.assert_close(p_dev, p_cpu, rtol=0, atol=SLACK * err_p + 1e-7)
    return err_cpu, err_dev, float(ref.abs().max())


@pytest.mark.parametrize("epochs", [1, 3])
def test_pool_on_cuda_equals_the_cpu_within_float32_rounding(epochs: int) -> None:
    assert not torch.backends.cuda.matmul.allow_tf32, "TF32 changes float32 products (module docstring)"
    err_cpu, err_cuda, size = _compare(torch.device("cuda"), epochs)
    assert 0 < err_cpu < 1e-5 * size  # float32 rounding, measured, and small next to the deltas
    assert err_cuda <= SLACK * err_cpu, (err_cuda, err_cpu)


def test_simulation_trains_on_cuda_when_asked_and_by_default() -> None:
    assert resolve_device("auto").type == "cuda"
    cfg = ExperimentConfig(synthetic_users=60, synthetic_items=40, synthetic_ratings_per_user=10, factors=4,
                           rounds=2, protocol="plaintext", device="cuda")
    sim = Simulation(cfg)
    assert sim.pool.device.type == "cuda"
    report = sim.run(progress=False)
    assert all(r["rmse"] is not None and r["rmse"] < 5 for r in report["rounds"])
