import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from difflab.config import ExperimentConfig, load_config
from difflab.errors import DifflabError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_are_typed(tmp_path):
    config = load_config(
        write(tmp_path, "train:\n  steps: 10\n  lr: 1e-4\nmodel:\n  preset: unet-tiny\n"),
        ["train.batch_size=7", "data.pad_to_32=true", "train.lr=3e-4"],
    )
    assert config.train.steps == 10 and config.train.batch_size == 7
    assert config.train.lr == pytest.approx(
        3e-4
    )  # "1e-4" is a string to YAML 1.1; accepted as a float
    assert config.data.pad_to_32 is True
    assert config.model == {"preset": "unet-tiny"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  stepz: 3\n", r"unknown config key 'train.stepz' \(did you mean 'steps'\?\)"),
        ("trian:\n  steps: 3\n", "unknown config key 'trian'"),
        ("train:\n  steps: many\n", "train.steps must be an integer"),
        ("train:\n  steps: 2.5\n", "train.steps must be an integer"),
        ("train:\n  bf16: 1\n", "train.bf16 must be true or false"),
        ("data: [1, 2]\n", "data must be a mapping"),
        ("- a\n- b\n", "must hold a mapping"),
        ("train: {steps: 3\n", "not valid YAML at line"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, message):
    with pytest.raises(DifflabError, match=message):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.steps", "section.key=value"),
        ("=3", "empty key"),
        ("train.steps.x=3", "train.steps must be an integer"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(DifflabError, match=message):
        load_config(None, [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(DifflabError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_every_shipped_config_loads():
    from pathlib import Path

    from difflab.training.imagen_loop import ImagenStageConfig, load_imagen_stage_config

    for path in sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml")):
        if path.name.startswith("imagen_"):  # one stage of an Imagen cascade (difflab train-imagen)
            assert isinstance(load_imagen_stage_config(path), ImagenStageConfig)
        else:
            assert isinstance(load_config(path), ExperimentConfig)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["data", "model", "train", "diffusion", "kind", "extra"]),
        yaml_values,
        max_size=4,
    )
)
def test_fuzzed_configs_load_or_fail_with_a_clear_error(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        load_config(path)
    except DifflabError as error:
        message = str(error)
        assert message.endswith(".") and "\n" not in message


@pytest.mark.parametrize(
    ("key", "value"),
    [("high_noise_fraction", "1.5"), ("high_noise_start", "1.0"), ("high_noise_fraction", ".nan")],
)
def test_imagen_high_noise_settings_are_bounded(tmp_path, key, value):
    """Fails if a fraction outside [0, 1] or a start at T reaches torch.randint (a raw error) or
    silently trains every sample at high noise, or if a NaN is reported as -inf."""
    import re
    from pathlib import Path

    from difflab.training.imagen_loop import load_imagen_stage_config

    source = Path(__file__).parents[1] / "configs" / "imagen_base16.yaml"
    text, count = re.subn(rf"(?m)^  {key}: .*$", f"  {key}: {value}", source.read_text("utf-8"))
    assert count == 1
    path = tmp_path / "stage.yaml"
    path.write_text(text, encoding="utf-8")
    message = "must be a finite number, got nan" if value == ".nan" else "must lie in"
    with pytest.raises(DifflabError, match=f"high_noise_fraction {message}"):
        load_imagen_stage_config(path)
