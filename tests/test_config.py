from nerfbs.config import Config, GridConfig


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
