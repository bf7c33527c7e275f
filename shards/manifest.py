"""The shard manifest: which shards exist, what they hold, and how to select them by intensity and actors."""
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from shards.atomic import write_json
from shards.labels import EMOTIONS, SELECTIONS, class_names, emotion_of_key

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ShardEntry:
    """One tar shard: all clips of one actor at one intensity."""

    path: str  # relative to the shard root, e.g. "normal/actor_12-000000.tar"
    intensity: str
    actor: int
    samples: int
    bytes: int
    sha256: str
    keys: list[str] = field(default_factory=list)
    emotions: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""  # digest of the inputs (sources, sample rate, format); unchanged inputs skip re-packing

    def only(self, emotions) -> "ShardEntry":
        """This shard restricted to the samples of EMOTIONS (keys, count and emotion counts; the tar is unchanged)."""
        wanted = set(emotions)
        keys = [k for k in self.keys if emotion_of_key(k) in wanted]
        return replace(self, keys=keys, samples=len(keys), emotions={e: n for e, n in self.emotions.items() if e in wanted})

    @property
    def index_path(self) -> str:
        """The DALI index file that sits beside the tar."""
        return self.path[: -len(".tar")] + ".idx"


@dataclass
class Manifest:
    """Everything a reader needs to know about a shard directory."""

    sample_rate: int
    shards: list[ShardEntry]
    labels: tuple[str, ...] = EMOTIONS
    format_version: int = FORMAT_VERSION

    @classmethod
    def load(cls, root: Path) -> "Manifest":
        """Read ROOT/manifest.json; a missing or foreign manifest is a clear error."""
        path = Path(root) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no shard manifest (run `python -m preprocess` first)")
        raw = json.loads(path.read_text())
        if raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {raw.get('format_version')!r}, this code reads {FORMAT_VERSION}")
        shards = [ShardEntry(**s) for s in raw["shards"]]
        return cls(sample_rate=raw["sample_rate"], shards=shards, labels=tuple(raw["labels"]))

    def save(self, root: Path) -> Path:
        """Write ROOT/manifest.json atomically (temporary name, then rename)."""
        return write_json(Path(root) / MANIFEST_NAME, asdict(self))

    @property
    def actors(self) -> list[int]:
        """Every actor with at least one shard."""
        return sorted({s.actor for s in self.shards})

    def select(self, intensity: str, actors=None) -> list[ShardEntry]:
        """Shards of one selection (`normal`, `strong` or `all`), optionally only these actors."""
        if intensity not in SELECTIONS:
            raise ValueError(f"intensity must be one of {SELECTIONS}, got {intensity!r}")
        wanted = None if actors is None else set(actors)
        return [
            s for s in self.shards
            if (intensity == "all" or s.intensity == intensity) and (wanted is None or s.actor in wanted)
        ]

    def class_names(self, intensity: str) -> list[str]:
        """The class list of a selection, derived from the data (strong has no neutral: 7 classes)."""
        return class_names(e for s in self.select(intensity) for e, n in s.emotions.items() if n)
