"""Speaker-independent splits (shards/splits.py): train, validation and test never share an actor; folds are
gender-balanced and test every actor once; bad options and leaky hand-built splits are clear errors."""
import pytest

from shards.splits import Split, gender_balanced_folds, make_split


def test_folds_are_gender_balanced_and_cover_every_actor_once():
    """6 folds of 24 actors: 2 male + 2 female each; every actor is a test actor in exactly one fold."""
    actors = range(1, 25)
    folds = gender_balanced_folds(actors, 6)
    assert sorted(a for f in folds for a in f) == list(actors)
    assert all(sum(a % 2 for a in f) == 2 and len(f) == 4 for f in folds)
    tests = [a for i in range(6) for a in make_split(actors, folds=6, fold=i).test]
    assert sorted(tests) == list(actors)


@pytest.mark.parametrize("kwargs", [{}, {"folds": 6, "fold": 5}, {"folds": 4, "fold": 2}, {"folds": 12, "fold": 7},
                                    {"test_actors": [1, 2], "val_actors": [3, 4]},
                                    {"folds": 6, "fold": 5, "validation": False},
                                    {"test_actors": [1, 2], "validation": False}])
def test_splits_never_share_an_actor(kwargs):
    """Train, validation and test are disjoint and together hold every actor."""
    split = make_split(range(1, 25), **kwargs)
    parts = [set(split.train), set(split.val), set(split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(1, 25))


def test_default_split_works_on_the_four_actor_sample():
    """The bundled sample's four actors give one test, one validation and two training actors."""
    split = make_split([1, 2, 3, 4])
    assert (len(split.train), len(split.val), len(split.test)) == (2, 1, 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"test_actors": [1]}, "give both"),
    ({"test_actors": [1], "val_actors": [30]}, r"actor\(s\) \[30\] are not in the shards"),
    ({"test_actors": [1], "val_actors": [1]}, "in two parts"),
    ({"folds": 30}, "--folds must be between 2 and"),
    ({"folds": 6, "fold": 6}, "--fold must be in 0..5"),
    ({"folds": 6, "test_actors": [1], "val_actors": [2]}, "exclude each other"),
    ({"test_actors": [1], "val_actors": [2], "validation": False}, "drop --val-actors"),
    ({"val_actors": [2], "validation": False}, "drop --val-actors"),
    ({"val_actors": [2], "validation": False, "test": False}, "drop --val-actors"),
    ({"folds": 6, "val_actors": [2], "test": False}, "exclude each other"),
])
def test_bad_split_options_are_clear_errors(kwargs, message):
    """Inconsistent split options fail with a message naming the problem."""
    with pytest.raises(ValueError, match=message):
        make_split(range(1, 25), **kwargs)


def test_split_refuses_leaks():
    """A hand-built split with an actor in two parts is refused."""
    with pytest.raises(ValueError, match=r"actor\(s\) \[2\]"):
        Split(train=(1, 2), val=(2,), test=(3,))


@pytest.mark.parametrize("fold", range(6))
def test_a_split_without_validation_trains_on_the_validation_fold(fold):
    """validation=False: the same test actors as the fold with validation, no validation actor, and the validation
    fold's actors in training (20 of 24 actors train instead of 16)."""
    held_out, no_val = make_split(range(1, 25), folds=6, fold=fold), make_split(range(1, 25), folds=6, fold=fold,
                                                                                 validation=False)
    assert no_val.test == held_out.test and no_val.val == ()
    assert set(no_val.train) == set(held_out.train) | set(held_out.val) and len(no_val.train) == 20


def test_split_needs_training_actors():
    """No training actor is refused; no validation actor is a split without validation, no test actor one for a final
    model (make_split gives it only for test=False: below)."""
    with pytest.raises(ValueError, match="train part of the split has no actor"):
        Split(train=(), val=(1,), test=(2,))
    assert Split(train=(1,), val=(), test=(2,)).val == () and Split(train=(1, 2), val=(), test=()).test == ()


@pytest.mark.parametrize("fold", [0, 5])
def test_a_split_without_test_actors_trains_on_them(fold):
    """test=False (a final model): the test fold's actors train too; with validation the next fold still validates,
    without it all 24 actors train. Asking for test actors as well is refused."""
    held_out = make_split(range(1, 25), folds=6, fold=fold)
    final = make_split(range(1, 25), folds=6, fold=fold, test=False)
    assert final.test == () and final.val == held_out.val and len(final.train) == 20
    assert set(final.train) == set(held_out.train) | set(held_out.test)
    everyone = make_split(range(1, 25), folds=6, fold=fold, validation=False, test=False)
    assert everyone.train == tuple(range(1, 25)) and everyone.val == everyone.test == ()
    explicit = make_split(range(1, 25), val_actors=[3, 4], test=False)
    assert explicit.val == (3, 4) and explicit.test == () and len(explicit.train) == 22
    with pytest.raises(ValueError, match="--no-test trains on the test actors too: drop --test-actors"):
        make_split(range(1, 25), test_actors=[1], validation=False, test=False)
