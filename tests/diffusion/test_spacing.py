import pytest
import torch

from difflab.diffusion import SPACING_NAMES, NoiseSchedule, timestep_sequence
from difflab.errors import DifflabError

T = 1000
SCHEDULE = NoiseSchedule.from_name("linear", T)  # read by the karras spacing only


@pytest.mark.parametrize("spacing", SPACING_NAMES)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 333, 999, T])
def test_every_spacing_is_valid_and_strictly_decreasing(spacing, steps):
    seq = timestep_sequence(T, steps, spacing, SCHEDULE)
    assert seq.dtype == torch.int64 and seq.shape == (steps,)
    assert (seq >= 0).all() and (seq < T).all()
    assert (seq[:-1] > seq[1:]).all(), seq
    if spacing in ("trailing", "karras"):
        assert seq[0] == T - 1  # trailing and karras always start at the noisiest step
    if spacing == "karras" and steps > 1:
        assert seq[-1] == 0  # karras spans sigma_max .. sigma_min
    elif spacing not in ("trailing", "karras"):
        assert seq[-1] == 0  # every other spacing ends at t = 0


@pytest.mark.parametrize("spacing", SPACING_NAMES)
def test_all_steps_visit_every_timestep(spacing):
    assert torch.equal(timestep_sequence(T, T, spacing, SCHEDULE), torch.arange(T - 1, -1, -1))


def test_known_sequences():
    assert timestep_sequence(1000, 10, "uniform").tolist() == list(range(900, -1, -100))
    assert timestep_sequence(1000, 10, "leading").tolist() == list(range(900, -1, -100))
    assert timestep_sequence(1000, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert timestep_sequence(1000, 2, "linspace").tolist() == [999, 0]
    quadratic = timestep_sequence(1000, 10, "quadratic").flip(0)
    assert quadratic[-1] == int(0.8 * 1000)  # the DDIM paper's quadratic spacing stops at 0.8 T
    assert (quadratic.diff().diff() >= -1).all()  # gaps grow (up to rounding)


@pytest.mark.parametrize("steps", [0, -3, T + 1])
def test_out_of_range_steps_are_rejected(steps):
    with pytest.raises(DifflabError, match="between 1 and"):
        timestep_sequence(T, steps)


def test_unknown_spacing_is_rejected():
    with pytest.raises(DifflabError, match="unknown timestep spacing"):
        timestep_sequence(T, 10, "sideways")


def test_automatic_spacing_follows_the_schedule_tail_and_the_prediction():
    """Trailing only for a v or x0 model on the cosine schedule (sigma_max 20,291); the sampler's
    own spacing on the linear one (157) and for eps models. Fails if the rule reads the schedule
    or the prediction wrongly (e.g. sends an eps model to t = T - 1, where its x0 divides by ~0)."""
    from difflab.diffusion import automatic_spacing
    from difflab.diffusion.spacing import terminal_sigma

    cosine, linear = (
        NoiseSchedule.from_name("cosine", 1000),
        NoiseSchedule.from_name("linear", 1000),
    )
    assert terminal_sigma(cosine) == pytest.approx(20291.17, rel=1e-4)
    assert terminal_sigma(linear) == pytest.approx(157.41, rel=1e-4)
    for preferred in ("karras", "uniform"):
        assert automatic_spacing(preferred, cosine, "v") == "trailing"
        assert automatic_spacing(preferred, cosine, "x0") == "trailing"
        assert automatic_spacing(preferred, cosine, "eps") == preferred
        assert automatic_spacing(preferred, linear, "v") == preferred
        # classifier guidance: never t = T - 1 of a long tail, where x0 moves by ~2e4 x grad
        assert automatic_spacing(preferred, cosine, "v", classifier_guided=True) == "uniform"
        assert automatic_spacing(preferred, linear, "eps", classifier_guided=True) == preferred
