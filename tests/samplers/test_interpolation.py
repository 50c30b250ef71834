import torch

from difflab.diffusion import Denoiser, NoiseSchedule, timestep_sequence
from difflab.samplers import interpolate, slerp
from tests.helpers import GaussianOptimalEps


def test_slerp_endpoints_and_norm_on_orthogonal_vectors():
    z0 = torch.tensor([[1.0, 0.0]])
    z1 = torch.tensor([[0.0, 1.0]])
    assert torch.allclose(slerp(z0, z1, 0.0), z0)
    assert torch.allclose(slerp(z0, z1, 1.0), z1, atol=1e-7)
    mid = slerp(z0, z1, 0.5)
    assert torch.allclose(
        mid.norm(), torch.tensor(1.0)
    )  # stays on the sphere; lerp would give 0.707
    assert torch.allclose(mid, torch.tensor([[2**-0.5, 2**-0.5]]))


def test_slerp_of_parallel_vectors_falls_back_to_lerp():
    z = torch.tensor([[1.0, 2.0]])
    assert torch.allclose(slerp(z, 3 * z, 0.5), 2 * z)


def test_interpolate_decodes_the_endpoints():
    schedule = NoiseSchedule.from_name("linear", 1000)
    denoiser = Denoiser(GaussianOptimalEps(schedule), schedule)
    generator = torch.Generator().manual_seed(0)
    z0, z1 = (
        torch.randn(1, 1, 4, 4, generator=generator),
        torch.randn(1, 1, 4, 4, generator=generator),
    )
    timesteps = timestep_sequence(1000, 20)
    path = interpolate(denoiser, z0, z1, 5, timesteps)
    assert path.shape == (5, 1, 4, 4)
    from difflab.samplers import ddim_sample

    assert torch.allclose(path[0], ddim_sample(denoiser, z0, timesteps)[0], atol=1e-5)
    assert torch.allclose(path[-1], ddim_sample(denoiser, z1, timesteps)[0], atol=1e-5)
