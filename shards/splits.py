"""Speaker-independent splits: train, validation and test never share an actor.

A split without validation actors (`validation=False`) gives the validation fold's actors to training: the model is then
the last epoch's, chosen by no one (the recipe's setting; the README's results say why). A split without test actors
(`test=False`) gives them to training too: the final model to use, trained once a cross-validation has measured the
recipe on held-out speakers; it has no test figures of its own.
"""
from dataclasses import dataclass

from shards.labels import gender_of

DEFAULT_FOLDS = 6


@dataclass(frozen=True)
class Split:
    """Actors of each part of one split."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]

    def __post_init__(self):
        """Refuse a split that leaks (an actor in two parts) or has no training actor (no validation actor is a split
        without validation, no test actor one for a final model)."""
        if not self.train:
            raise ValueError("the train part of the split has no actor")
        shared = (set(self.train) & set(self.val)) | (set(self.train) & set(self.test)) | (set(self.val) & set(self.test))
        if shared:
            raise ValueError(f"actor(s) {sorted(shared)} would be in two parts of the split")


def gender_balanced_folds(actors, k: int) -> list[tuple[int, ...]]:
    """Deal the actors into K folds, males first then females, round-robin: each fold gets its share of each gender."""
    actors = sorted(set(actors))
    if not 2 <= k <= len(actors):
        raise ValueError(f"--folds must be between 2 and the number of actors ({len(actors)}), got {k}")
    ordered = [a for a in actors if gender_of(a) == "male"] + [a for a in actors if gender_of(a) == "female"]
    return [tuple(sorted(ordered[i::k])) for i in range(k)]


def fold_split(actors, k: int | None = None, fold: int = 0, validation: bool = True, test: bool = True) -> Split:
    """Fold FOLD of K is the test set (TEST) or training too, the next fold validation (VALIDATION) or training too,
    the rest training (K defaults to 6, or fewer actors)."""
    k = k or min(DEFAULT_FOLDS, len(set(actors)))
    folds = gender_balanced_folds(actors, k)
    if not 0 <= fold < k:
        raise ValueError(f"--fold must be in 0..{k - 1}, got {fold}")
    val = (fold + 1) % k
    held_out = {fold} if test else set()
    held_out |= {val} if validation else set()
    train = sorted(a for i, f in enumerate(folds) if i not in held_out for a in f)
    return Split(train=tuple(train), val=folds[val] if validation else (), test=folds[fold] if test else ())


def explicit_split(actors, test_actors, val_actors) -> Split:
    """Test and validation actors as given, every other actor for training."""
    known = set(actors)
    unknown = (set(test_actors) | set(val_actors)) - known
    if unknown:
        raise ValueError(f"actor(s) {sorted(unknown)} are not in the shards (they hold {sorted(known)})")
    rest = tuple(sorted(known - set(test_actors) - set(val_actors)))
    return Split(train=rest, val=tuple(sorted(val_actors)), test=tuple(sorted(test_actors)))


def make_split(actors, folds: int | None = None, fold: int = 0, test_actors=None, val_actors=None,
               validation: bool = True, test: bool = True) -> Split:
    """The split the options ask for: explicit actors, or a fold of gender-balanced K folds (the default); without
    validation actors when not VALIDATION, without test actors when not TEST (a final model)."""
    if not test and test_actors:
        raise ValueError("--no-test trains on the test actors too: drop --test-actors")
    if not (test_actors or val_actors):
        return fold_split(actors, folds, fold, validation, test=test)
    if folds is not None:
        raise ValueError("--folds/--fold and --test-actors/--val-actors exclude each other")
    if not validation and val_actors:
        raise ValueError("--no-validation trains on every actor but the test actors: drop --val-actors")
    if validation and test and not (test_actors and val_actors):
        raise ValueError("give both --test-actors and --val-actors, or neither")
    return explicit_split(actors, test_actors or (), val_actors or ())
