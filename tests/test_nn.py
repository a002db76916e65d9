"""Backbones match their published sizes, and augmentation does what it claims."""

import jax
import jax.numpy as jnp
import numpy as np

from xray_gen.data import augment
from xray_gen.nn.densenet import DenseNet
from xray_gen.nn.resnet import ResNet


def _count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def test_densenet121_has_torchvision_parameter_count():
    net = DenseNet(num_classes=1000)
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
    assert _count(shapes["params"]) == 7_978_856  # torchvision densenet121


def test_resnet18_has_torchvision_parameter_count_without_fc():
    shapes = jax.eval_shape(ResNet().init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
    assert _count(shapes["params"]) == 11_689_512 - (512 * 1000 + 1000)


def test_one_channel_stem_and_feature_shapes():
    net = DenseNet(num_classes=14, block_sizes=(2, 2), growth_rate=8, init_features=16, small_input=True)
    variables = net.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 1)))
    logits, features = net.apply(variables, jnp.zeros((2, 32, 32, 1)))
    assert logits.shape == (2, 14) and features.shape[0] == 2
    assert variables["params"]["conv0"]["kernel"].shape[2] == 1


def test_rotation_by_90_degrees_matches_rot90():
    image = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 9, 9, 1)), jnp.float32)
    rotated = jax.vmap(augment._rotate, in_axes=(0, None, None))(image, jnp.pi / 2, -1.0)
    np.testing.assert_allclose(rotated[0, ..., 0], np.rot90(image[0, ..., 0], k=-1), atol=1e-5)  # clockwise for positive angles


def test_augment_without_jitter_or_rotation_is_identity_and_never_flips_by_default():
    images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
    same = augment.augment(jax.random.PRNGKey(0), images, max_rotation_deg=0, brightness=0, contrast=0)
    np.testing.assert_allclose(same, images, atol=1e-6)
    jittered = augment.augment(jax.random.PRNGKey(0), images, max_rotation_deg=10)
    assert jittered.shape == images.shape and float(jnp.abs(jittered).max()) <= 1.0


def test_image_grid_places_tiles_row_major():
    from xray_gen.training.summaries import image_grid

    tiles = np.stack([np.full((2, 3, 1), i, np.uint8) for i in range(5)])
    grid = image_grid(tiles, columns=2)
    assert grid.shape == (1, 6, 6, 1)
    assert grid[0, 0, 0, 0] == 0 and grid[0, 0, 3, 0] == 1 and grid[0, 2, 0, 0] == 2 and grid[0, 4, 0, 0] == 4
    assert grid[0, 4, 3, 0] == 0  # padding tile
