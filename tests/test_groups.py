import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from numpy_reference import MATRICES, ROT, apply, index_of

from deepsea.groups import C4, D4, get_group

GROUPS = [C4, D4]


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_group_axioms(group):
    n = group.order
    table = group.table
    # closure: every product is an element, every row and column a permutation (Latin square)
    assert table.shape == (n, n)
    for i in range(n):
        assert sorted(table[i]) == list(range(n))
        assert sorted(table[:, i]) == list(range(n))
    # identity
    e = group.identity
    assert all(table[e, i] == i and table[i, e] == i for i in range(n))
    # inverses
    for i in range(n):
        assert table[i, group.inverse[i]] == e and table[group.inverse[i], i] == e
    # associativity over all triples
    for a, b, c in itertools.product(range(n), repeat=3):
        assert table[table[a, b], c] == table[a, table[b, c]]


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_table_matches_matrix_multiplication(group):
    mats = MATRICES[group.name]
    for a, b in itertools.product(range(group.order), repeat=2):
        assert group.compose(a, b) == index_of(group.name, mats[a] @ mats[b])


def test_d4_is_not_commutative_and_c4_is():
    assert any(D4.compose(a, b) != D4.compose(b, a) for a in range(8) for b in range(8))
    assert all(C4.compose(a, b) == C4.compose(b, a) for a in range(4) for b in range(4))


def test_reference_rotation_is_numpy_rot90():
    img = np.arange(25.0).reshape(5, 5)
    np.testing.assert_array_equal(apply(ROT, img), np.rot90(img))


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
@pytest.mark.parametrize("n", [1, 2, 5, 6])
def test_action_matches_coordinate_reference(group, n, rng):
    x = rng.standard_normal((n, n, 3))
    for a in range(group.order):
        np.testing.assert_array_equal(group.act(a, x, axes=(0, 1)), apply(MATRICES[group.name][a], x))


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
@pytest.mark.parametrize("shape", [(2, 5, 5, 3), (1, 6, 6, 1), (3, 1, 1, 2)])
def test_action_is_a_homomorphism(group, shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    xj = jnp.asarray(x)
    for a, b in itertools.product(range(group.order), repeat=2):
        ab = group.compose(a, b)
        np.testing.assert_array_equal(group.act(a, group.act(b, x)), group.act(ab, x))
        np.testing.assert_array_equal(np.asarray(group.act(a, group.act(b, xj))), np.asarray(group.act(ab, xj)))


def test_rotation_of_non_square_maps_is_an_error():
    with pytest.raises(ValueError, match="square"):
        C4.act(1, np.zeros((1, 4, 5, 1)))
    # a half turn and mirrors keep any rectangle
    assert D4.act(2, np.zeros((1, 4, 5, 1))).shape == (1, 4, 5, 1)


def test_labels_and_lookup():
    assert [D4.label(i) for i in range(8)] == ["e", "r", "r2", "r3", "m", "rm", "r2m", "r3m"]
    assert get_group("cyclic") is C4 and get_group("D4") is D4 and get_group(D4) is D4
    with pytest.raises(ValueError, match="unknown group 'c8'"):
        get_group("c8")
