import dataclasses

import pytest

from nerfbs.config import SMALL_MODEL, SMALL_RENDER, Config, GridConfig, model_preset_name, resolve_model_preset


def test_default_grid_matches_the_original_parameter_count():
    grid = GridConfig()
    # 47 bases x 246,464 entries x 4 features = 46.3 M parameters, as the original CUDA encoder.
    assert grid.table_entries == 246464
    assert grid.level_resolutions[0] == 16 and grid.level_dense[:2] == (True, True)
    assert not any(grid.level_dense[2:])
    assert grid.output_dim == 64


def test_config_round_trips_through_a_dict():
    cfg = Config()
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_old_config_dicts_with_retired_keys_still_load():
    old = Config().to_dict()
    old["data"]["scale"] = 0.33  # DataConfig.scale, written by checkpoints before it was removed
    assert Config.from_dict(old) == Config()
    assert "scale" not in Config().to_dict()["data"]
    old["train"]["scale"] = 0.33  # retired in the data section only
    with pytest.raises(ValueError, match="TrainConfig has unknown keys"):
        Config.from_dict(old)


def test_model_auto_is_the_original_on_cuda_and_small_on_a_cpu():
    assert resolve_model_preset("auto", "cuda") == "original"
    assert resolve_model_preset("auto", "cpu") == "small"
    assert resolve_model_preset("small", "cuda") == "small" and resolve_model_preset("original", "cpu") == "original"
    with pytest.raises(ValueError):
        resolve_model_preset("huge", "cpu")


def test_model_preset_name_ignores_the_subject_s_basis_count():
    small = Config(model=SMALL_MODEL, render=SMALL_RENDER)
    fitted = small.replace(model=dataclasses.replace(SMALL_MODEL, grid=dataclasses.replace(SMALL_MODEL.grid,
                                                                                             num_bases=9)))
    assert model_preset_name(Config()) == "original"
    assert model_preset_name(small) == "small" and model_preset_name(fitted) == "small"
    assert model_preset_name(small.replace(render=Config().render)) == "custom"


def test_step_scale_lengthens_every_step_and_is_checked():
    from nerfbs.config import RenderConfig
    from taichi_kernels.samples import MarchParams

    one = MarchParams.from_render_config(RenderConfig(step_scale=1.0, long_step_density=0.0))
    four = MarchParams.from_render_config(RenderConfig(step_scale=4, long_step_density=50.0))
    assert one.long_max_step == one.max_step == pytest.approx(2 * 0.06 / 127)  # the original: one cell of 128^3
    assert four.long_max_step == pytest.approx(4 * one.max_step) and four.long_step_growth == pytest.approx(4 * one.step_growth)
    assert (four.min_step, four.max_step, four.long_step_density) == (one.min_step, one.max_step, 50.0)
    old = Config().to_dict()
    del old["render"]["step_scale"], old["render"]["long_step_density"]  # checkpoints written before the options
    assert Config.from_dict(old).render == RenderConfig(step_scale=1.0, long_step_density=0.0)  # as they trained
    assert (RenderConfig().step_scale, RenderConfig().long_step_density) == (5.0, 200.0)  # today's default
    for bad in ({"step_scale": 0.5}, {"step_scale": 17.0}, {"long_step_density": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RenderConfig(**bad)
