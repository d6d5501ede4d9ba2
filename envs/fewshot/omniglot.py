"""Omniglot few-shot task source, read straight from the published zips.

Omniglot (Lake, Salakhutdinov & Tenenbaum, *Science* 2015) holds 1,623 handwritten characters from 50 alphabets,
each drawn once by 20 different people, as 105×105 1-bit PNGs. The files are published in the data set's public
repository (https://github.com/brendenlake/omniglot, folder ``python/``). Nothing here downloads: point the code at a
folder that holds the zips.

Data root
    The ``root`` argument, else the ``METARL_DATA`` environment variable. Either may be the folder that holds the
    zips or a folder with an ``omniglot/`` subfolder that holds them (both are searched). Without either, or without
    the expected files, :class:`DatasetNotFoundError` (a ``FileNotFoundError``) says in one line which files are
    expected and where to get them. A corrupt zip, an undecodable PNG or a zip with the wrong layout raises
    :class:`DatasetCorruptError` (a ``ValueError``) in one line; both derive from :class:`DatasetError`.

Image zips (:class:`OmniglotCharacters`)
    ==============================  =========================================================================
    zip                             content (layout ``<top>/<Alphabet>/<characterNN>/<drawing>.png``)
    ==============================  =========================================================================
    images_background_small1.zip    5 alphabets, 136 characters (Balinese, Early_Aramaic, Greek, Korean, Latin)
    images_background_small2.zip    5 alphabets, 156 characters (Greek, Japanese_(katakana), Latin, Sanskrit,
                                    Tagalog)
    images_background.zip           the full background set: 30 alphabets, 964 characters
    images_evaluation.zip           the evaluation set: 20 alphabets, 659 characters
    ==============================  =========================================================================

    A class is an ``(alphabet, character)`` pair. Classes are de-duplicated across zips: Greek (24 characters) and
    Latin (26) appear, drawing for drawing, in both small splits, so the two small zips give 136 + 156 − 50 = 242
    classes; the first zip that holds a class wins (the small splits are also subsets of the full background zip).
    Classes are ordered by ``(alphabet, character)``, drawings by file name; every class must have 20 drawings.

Preprocessing (the usual one for few-shot Omniglot)
    Each PNG is decoded with Pillow to 8-bit greyscale (background 255, ink 0), resized to ``image_size``
    (28 by default) with Pillow's ``LANCZOS`` filter (``resample`` picks another: ``"box"`` is area averaging),
    then *inverted*, so that strokes are bright: stored as ``uint8`` with ink 255 and background 0, and handed
    out as ``float32`` in ``[0, 1]`` (ink 1.0, background 0.0). All images live in one ``uint8`` tensor
    ``[classes, 20, image_size, image_size]`` in memory. ``cache=True`` stores the decoded tensor under
    ``~/.cache/metarl`` (written atomically, keyed by the zips' sizes and modification times and the preprocessing
    settings), so that larger sets are decoded once.

Few-shot task law (:class:`OmniglotFewShot`)
    ``sample(n, split=..., seed=...)`` draws ``n`` independent N-way K-shot tasks (the few-shot Omniglot benchmark
    of Vinyals et al. 2016, *Matching networks for one shot learning*). Each task draws ``ways``
    distinct classes uniformly without replacement from the split's class pool, in a uniformly random order
    (class ``j`` of the task gets label ``j``), then ``shots + query_shots`` distinct drawings of each class
    uniformly without replacement: the first ``shots`` form the support set, the rest the query set.

    * Classes: with ``rotations=True`` (default, as in Santoro et al. 2016 and Finn et al. 2017) each character
      at 0°, 90°, 180° and 270° counts as its own class (4 × the characters); a task may hold the same character
      at two rotations, which are then two different labels.
    * Splits ``train``/``val``/``test`` are disjoint by construction, by character (``split_by="character"``,
      default) or by alphabet (``split_by="alphabet"``): a unit's split is fixed by a seeded hash of its name,
      ``u = sha256(f"{split_seed}/{alphabet}/{character}")`` (``f"{split_seed}/{alphabet}"`` by alphabet), its
      first 8 bytes read big-endian as a number in ``[0, 1)``, ``train`` if
      ``u < f_train``, ``val`` if ``u < f_train + f_val``, else ``test`` (``split_fractions`` default
      ``(0.7, 0.1, 0.2)``). Because a character's split depends on its own name only, adding zips never moves a
      character from one split to another, so a model trained on one set of zips is never tested on its own
      training characters when more data is added. All rotations of a character share its split. With the two
      small zips and the defaults: 159 / 28 / 55 characters (636 / 112 / 220 classes with rotations).
    * Within-alphabet tasks (``within_alphabet=p``, default 0): each task is, with probability ``p``, drawn from one
      alphabet only, like the one-shot runs: an alphabet group (an alphabet at one rotation: rotating a whole
      alphabet makes a new one, so rotations never mix inside such a task) is chosen uniformly among the split's
      groups that hold at least ``ways`` classes, then ``ways`` of its classes uniformly without replacement; the
      other tasks follow the law above. With the two small zips and 20 ways, Tagalog (17 characters) is never the
      alphabet of a within-alphabet task. ``p = 0`` draws exactly the numbers it always did.
    * Seeding: ``seed`` makes a fresh ``numpy.random.default_rng(seed)`` (same seed, same episodes); without it the
      source's own generator (from the constructor's ``seed``) is used and advanced. No global generator is used.

    Output (:class:`metarl.core.batch.EpisodeBatch`): ``support_x`` ``[n, ways*shots, 1, S, S]`` float32,
    ``support_y`` ``[n, ways*shots]`` int64 labels ``0..ways-1`` in class-major order
    (``[0]*shots + [1]*shots + ...``); ``query_x``/``query_y`` likewise with ``query_shots`` per class;
    ``ways`` and ``shots`` set. Indexing is vectorised (no per-image Python loop).

    Augmentation (``augment=True``): every sampled image is distorted by
    :func:`~metarl.envs.fewshot.distortions.random_affine` within
    :data:`~metarl.envs.fewshot.distortions.AUGMENT_RANGES`.

The original one-shot runs of Lake et al. (2015), their baselines and the scoring of a learner on them are in
:mod:`metarl.envs.fewshot.omniglot_runs`; the distortions in :mod:`metarl.envs.fewshot.distortions`. The figures of
learners trained on this source are in experiments/RESULTS.md ("Omniglot: the original one-shot task with the
minimal background"), beside their commands.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from metarl.core.batch import EpisodeBatch

from ..base import check_split
from .distortions import AUGMENT_RANGES, random_affine

__all__ = [
    "DatasetError",
    "DatasetNotFoundError",
    "DatasetCorruptError",
    "OmniglotCharacters",
    "OmniglotFewShot",
]

DRAWINGS_PER_CHARACTER = 20
RAW_SIZE = 105
IMAGE_ZIPS: tuple[str, ...] = (
    "images_background",
    "images_background_small1",
    "images_background_small2",
    "images_evaluation",
)
FEWSHOT_SPLITS: tuple[str, ...] = ("train", "val", "test")
SOURCE_HINT = "from the Omniglot data set's public repository by Lake et al. (github.com/brendenlake/omniglot, python/)"
IMAGES_EXPECTED = (
    "images_background_small1.zip, images_background_small2.zip, "
    "or the full images_background.zip / images_evaluation.zip"
)
RUNS_EXPECTED = "one_shot_runs_01-05.zip, all_runs.zip, or a folder of runNN/ dirs (python/one-shot-classification/)"
_RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
_CACHE_VERSION = 1


class DatasetError(Exception):
    """The data set cannot be used: missing files (:class:`DatasetNotFoundError`) or bad ones
    (:class:`DatasetCorruptError`)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The data set's files are not where they were looked for; the message names the files and their source."""


class DatasetCorruptError(DatasetError, ValueError):
    """A data file exists but cannot be read: a corrupt zip, an undecodable image or the wrong layout."""


# --- reading ----------------------------------------------------------------------------------------------------


def data_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Folders to search for the data: ``root`` (else ``$METARL_DATA``) and its ``omniglot/`` subfolder.

    Raises :class:`DatasetNotFoundError` when neither ``root`` nor ``METARL_DATA`` is given.
    """
    if root is None:
        env = os.environ.get("METARL_DATA")
        if not env:
            raise DatasetNotFoundError(
                f"no Omniglot data folder: pass root=... or set METARL_DATA to a folder holding {IMAGES_EXPECTED} "
                f"(and {RUNS_EXPECTED}), {SOURCE_HINT}"
            )
        root = env
    base = Path(root).expanduser()
    return [base, base / "omniglot"]


def _check_resample(resample: str) -> Image.Resampling:
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be one of {', '.join(_RESAMPLE)}, got {resample!r}")
    return _RESAMPLE[resample]


def _check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    return int(image_size)


def _decode(data: bytes, where: str) -> Image.Image:
    """Decode a PNG to 8-bit greyscale (background 255, ink 0); any failure becomes one DatasetCorruptError line."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            grey = img.convert("L")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DatasetCorruptError(f"cannot decode image {where}: {err}") from None
    if grey.size != (RAW_SIZE, RAW_SIZE):
        raise DatasetCorruptError(f"image {where} is {grey.size[0]}x{grey.size[1]}, expected {RAW_SIZE}x{RAW_SIZE}")
    return grey


def _preprocess(grey: Image.Image, image_size: int, resample: Image.Resampling) -> np.ndarray:
    """Resize a decoded image and invert it: ``uint8`` with ink 255 and background 0."""
    if image_size != RAW_SIZE:
        grey = grey.resize((image_size, image_size), resample)
    return 255 - np.asarray(grey, dtype=np.uint8)


def _ink(grey: Image.Image) -> np.ndarray:
    """The full-resolution stroke mask: ``bool`` ``[105, 105]``, True where there is ink."""
    return np.asarray(grey, dtype=np.uint8) < 128


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
        raise DatasetCorruptError(f"{path} is not a readable zip ({err}); get a fresh copy {SOURCE_HINT}") from None


def _read_member(archive: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise DatasetCorruptError(f"cannot read {name} from {path} ({err}); get a fresh copy {SOURCE_HINT}") from None


def _is_junk(name: str) -> bool:
    return name.endswith("/") or name.startswith("__MACOSX/") or Path(name).name.startswith(".")


# --- characters --------------------------------------------------------------------------------------------------


class OmniglotCharacters:
    """All drawings of every Omniglot character found in the image zips, decoded once into memory.

    Args:
        root: folder holding the zips (or an ``omniglot/`` subfolder with them); default ``$METARL_DATA``.
        sources: zip names to read (e.g. ``("images_background_small1",)``, with or without ``.zip``); default: every
            one of ``images_background``, ``images_background_small1``, ``images_background_small2``,
            ``images_evaluation`` that is present. A named zip that is missing raises :class:`DatasetNotFoundError`.
        image_size: side of the stored images (28; 105 keeps the full resolution, no resize).
        resample: Pillow filter for the resize: ``"lanczos"`` (default), ``"box"`` (area), ``"bilinear"``,
            ``"bicubic"``, ``"nearest"``.
        cache: False (default) decodes every time; True caches the decoded tensor in ``$XDG_CACHE_HOME/metarl`` or
            ``~/.cache/metarl``; a path caches in that folder.

    Attributes:
        images: ``uint8`` tensor ``[classes, 20, image_size, image_size]``, ink 255, background 0.
        classes: ``(alphabet, character)`` of each class, sorted.
        zip_paths: the zips read, in reading order.
        duplicates_dropped: classes found in more than one zip and kept once.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        sources: Sequence[str] | None = None,
        image_size: int = 28,
        resample: str = "lanczos",
        cache: bool | str | os.PathLike = False,
    ) -> None:
        self.image_size = _check_image_size(image_size)
        self.resample = resample
        filt = _check_resample(resample)
        self.zip_paths = self._find_zips(data_dirs(root), sources)
        cache_file = self._cache_file(cache)
        if cache_file is not None and cache_file.exists():
            loaded = self._load_cache(cache_file)
            if loaded is not None:
                self.images, self.classes, self.duplicates_dropped = loaded
                return
        self.images, self.classes, self.duplicates_dropped = self._decode_all(filt)
        if cache_file is not None:
            self._save_cache(cache_file)

    # public helpers
    def __len__(self) -> int:
        return len(self.classes)

    @property
    def alphabets(self) -> list[str]:
        """The alphabets present, sorted."""
        return sorted({alphabet for alphabet, _ in self.classes})

    def float_images(self) -> torch.Tensor:
        """All images as ``float32`` in ``[0, 1]`` (ink 1.0): ``[classes, 20, image_size, image_size]``."""
        return self.images.to(torch.float32) / 255.0

    # reading
    @staticmethod
    def _find_zips(dirs: list[Path], sources: Sequence[str] | None) -> list[Path]:
        def locate(stem: str) -> Path | None:
            return next((d / f"{stem}.zip" for d in dirs if (d / f"{stem}.zip").is_file()), None)

        if sources is None:
            found = [p for p in (locate(stem) for stem in IMAGE_ZIPS) if p is not None]
            if not found:
                raise DatasetNotFoundError(
                    f"no Omniglot image zips in {dirs[0]} (nor {dirs[1]}): expected {IMAGES_EXPECTED}, {SOURCE_HINT}"
                )
            return found
        if isinstance(sources, str) or not sources:
            raise ValueError(f"sources must be a non-empty list of zip names like {IMAGE_ZIPS[1]!r}, got {sources!r}")
        paths = []
        for name in sources:
            stem = name[:-4] if name.endswith(".zip") else name
            path = locate(stem)
            if path is None:
                raise DatasetNotFoundError(
                    f"{stem}.zip not found in {dirs[0]} (nor {dirs[1]}): expected {IMAGES_EXPECTED}, {SOURCE_HINT}"
                )
            paths.append(path)
        return paths

    def _list_classes(self) -> dict[tuple[str, str], tuple[Path, list[str]]]:
        """Map each ``(alphabet, character)`` to the zip that holds it first and its 20 drawing members."""
        classes: dict[tuple[str, str], tuple[Path, list[str]]] = {}
        self._duplicates = 0
        for path in self.zip_paths:
            with _open_zip(path) as archive:
                members: dict[tuple[str, str], list[str]] = {}
                for name in archive.namelist():
                    if _is_junk(name) or not name.lower().endswith(".png"):
                        continue
                    parts = name.split("/")
                    if len(parts) != 4 or not all(parts):
                        raise DatasetCorruptError(
                            f"{path} has the wrong layout: {name!r} is not <top>/<Alphabet>/<character>/<drawing>.png"
                        )
                    members.setdefault((parts[1], parts[2]), []).append(name)
            if not members:
                raise DatasetCorruptError(
                    f"{path} has the wrong layout: no images at <top>/<Alphabet>/<character>/<drawing>.png"
                )
            for key, names in members.items():
                if len(names) != DRAWINGS_PER_CHARACTER:
                    raise DatasetCorruptError(
                        f"{path}: {key[0]}/{key[1]} has {len(names)} drawings, expected {DRAWINGS_PER_CHARACTER}"
                    )
                if key in classes:
                    self._duplicates += 1
                    continue
                classes[key] = (path, sorted(names))
        return classes

    def _decode_all(self, filt: Image.Resampling) -> tuple[torch.Tensor, list[tuple[str, str]], int]:
        listing = self._list_classes()
        keys = sorted(listing)
        size = self.image_size
        images = np.empty((len(keys), DRAWINGS_PER_CHARACTER, size, size), dtype=np.uint8)
        by_zip: dict[Path, list[tuple[int, list[str]]]] = {}
        for index, key in enumerate(keys):
            path, names = listing[key]
            by_zip.setdefault(path, []).append((index, names))
        for path, entries in by_zip.items():
            with _open_zip(path) as archive:
                for index, names in entries:
                    for drawing, name in enumerate(names):
                        grey = _decode(_read_member(archive, name, path), f"{name} in {path}")
                        images[index, drawing] = _preprocess(grey, size, filt)
        return torch.from_numpy(images), keys, self._duplicates

    # caching
    def _cache_file(self, cache: bool | str | os.PathLike) -> Path | None:
        if cache is False or cache is None:
            return None
        if cache is True:
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "metarl"
        else:
            base = Path(cache).expanduser()
        key = hashlib.sha256()
        key.update(f"v{_CACHE_VERSION}|{self.image_size}|{self.resample}".encode())
        for path in self.zip_paths:
            stat = path.stat()
            key.update(f"|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return base / f"omniglot-{key.hexdigest()[:20]}.npz"

    def _load_cache(self, path: Path) -> tuple[torch.Tensor, list[tuple[str, str]], int] | None:
        """The cached tensor, or None (and a fresh decode) when the file is unreadable or inconsistent."""
        try:
            with np.load(path, allow_pickle=False) as data:
                images, alphabets, characters = data["images"], data["alphabets"], data["characters"]
                duplicates = int(data["duplicates"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None
        size = self.image_size
        if images.dtype != np.uint8 or images.shape[1:] != (DRAWINGS_PER_CHARACTER, size, size):
            return None
        if not (len(images) == len(alphabets) == len(characters)):
            return None
        classes = list(zip(alphabets.tolist(), characters.tolist()))
        return torch.from_numpy(np.ascontiguousarray(images)), classes, duplicates

    def _save_cache(self, path: Path) -> None:
        """Write the cache atomically (temporary file in the same folder, then rename); failures only skip caching."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".omniglot-", suffix=".npz.tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    np.savez(
                        handle,
                        images=self.images.numpy(),
                        alphabets=np.array([a for a, _ in self.classes]),
                        characters=np.array([c for _, c in self.classes]),
                        duplicates=np.array(self.duplicates_dropped),
                    )
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass


# --- N-way K-shot task source ---------------------------------------------------------------------------------


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _unit_fraction(text: str) -> float:
    """A number in [0, 1) fixed by ``text`` (first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


class OmniglotFewShot:
    """N-way K-shot classification tasks on Omniglot characters (the task law is in the module docstring).

    Args:
        characters: the decoded characters; default: ``OmniglotCharacters(root)``.
        root: data folder when ``characters`` is not given (default ``$METARL_DATA``).
        ways: classes per task (default 5).
        shots: support drawings per class (default 1).
        query_shots: query drawings per class (default 5; 0 gives an empty query set); ``shots + query_shots``
            must not exceed the 20 drawings.
        rotations: count 90°/180°/270° rotations of each character as extra classes (default True).
        split_by: ``"character"`` (default) or ``"alphabet"``: the unit assigned to a split.
        split_fractions: shares of ``train``/``val``/``test`` (non-negative, summing to 1; default 0.7/0.1/0.2).
        split_seed: seed of the hash that assigns units to splits (default 0; changing it changes the splits).
        seed: seed of the source's own generator, used when ``sample`` gets no seed.
        augment: distort every sampled image with :func:`~metarl.envs.fewshot.distortions.random_affine`
            (training; evaluation tasks should be sampled from a source without it).
        within_alphabet: probability that a task's classes all come from one alphabet at one rotation (default 0;
            the one-shot runs are within-alphabet).
        image_size: side of the images when ``characters`` is not given (default 28).
    """

    splits: tuple[str, ...] = FEWSHOT_SPLITS
    #: what learners need to know to build a model (see metarl.agents.make_learner)
    kind = "classification"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = int(self.characters.images.shape[-1])
        return (1, size, size)

    def __init__(
        self,
        characters: OmniglotCharacters | None = None,
        *,
        root: str | os.PathLike | None = None,
        ways: int = 5,
        shots: int = 1,
        query_shots: int = 5,
        rotations: bool = True,
        split_by: str = "character",
        split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
        split_seed: int = 0,
        seed: int | None = None,
        augment: bool = False,
        within_alphabet: float = 0.0,
        image_size: int = 28,
    ) -> None:
        self.ways, self.shots, self.query_shots = self._check_shape(ways, shots, query_shots)
        within_alphabet = float(within_alphabet)
        if not 0.0 <= within_alphabet <= 1.0:  # also rejects NaN
            raise ValueError(f"within_alphabet must be a probability in [0, 1], got {within_alphabet}")
        self.within_alphabet = within_alphabet
        self.augment = bool(augment)
        self.augment_ranges = dict(AUGMENT_RANGES)
        if split_by not in ("character", "alphabet"):
            raise ValueError(f"split_by must be 'character' or 'alphabet', got {split_by!r}")
        fractions = np.asarray(split_fractions, dtype=np.float64)
        if fractions.shape != (3,) or np.any(~np.isfinite(fractions)) or np.any(fractions < 0):
            raise ValueError(f"split_fractions must be three numbers >= 0 (train, val, test), got {split_fractions!r}")
        if abs(fractions.sum() - 1.0) > 1e-9:
            raise ValueError(f"split_fractions must sum to 1, got {split_fractions!r} (sum {fractions.sum():g})")
        self.characters = (characters if characters is not None
                           else OmniglotCharacters(root, image_size=_check_image_size(image_size)))
        self.rotations = bool(rotations)
        self.split_by = split_by
        self.split_fractions = tuple(float(f) for f in fractions)
        self.split_seed = int(split_seed)
        self._rng = np.random.default_rng(seed)
        self._pools = self._assign_splits()
        if self.ways > len(self._pools["train"]):
            raise ValueError(f"ways={self.ways} exceeds the {len(self._pools['train'])} classes of the train split")
        self._groups = {split: self._alphabet_groups(pool) for split, pool in self._pools.items()}

    @property
    def rotations_per_character(self) -> int:
        return 4 if self.rotations else 1

    def _assign_splits(self) -> dict[str, np.ndarray]:
        cut_train = self.split_fractions[0]
        cut_val = cut_train + self.split_fractions[1]
        members: dict[str, list[int]] = {split: [] for split in self.splits}
        for index, (alphabet, character) in enumerate(self.characters.classes):
            unit = f"{alphabet}/{character}" if self.split_by == "character" else alphabet
            u = _unit_fraction(f"{self.split_seed}/{unit}")
            split = "train" if u < cut_train else ("val" if u < cut_val else "test")
            members[split].append(index)
        r = self.rotations_per_character
        return {
            split: (np.asarray(idx, dtype=np.int64)[:, None] * r + np.arange(r)).reshape(-1)
            for split, idx in members.items()
        }

    def _alphabet_groups(self, pool: np.ndarray) -> list[np.ndarray]:
        """The classes of ``pool`` grouped by (alphabet, rotation), in sorted order."""
        r = self.rotations_per_character
        keys = [(self.characters.classes[c // r][0], int(c % r)) for c in pool]
        groups: dict[tuple[str, int], list[int]] = {}
        for key, c in zip(keys, pool):
            groups.setdefault(key, []).append(int(c))
        return [np.asarray(groups[key], dtype=np.int64) for key in sorted(groups)]

    def num_classes(self, split: str = "train") -> int:
        """Number of classes (characters × rotations) in ``split``."""
        return int(len(self._pools[check_split(split, self.splits)]))

    def split_classes(self, split: str = "train") -> list[tuple[str, str, int]]:
        """``(alphabet, character, rotation in degrees)`` of every class in ``split``."""
        r = self.rotations_per_character
        return [
            (*self.characters.classes[c // r], 90 * int(c % r)) for c in self._pools[check_split(split, self.splits)]
        ]

    @staticmethod
    def _check_shape(ways: object, shots: object, query_shots: object) -> tuple[int, int, int]:
        ways = _positive_int("ways", ways)
        shots = _positive_int("shots", shots)
        query_shots = _positive_int("query_shots", query_shots, minimum=0)
        if shots + query_shots > DRAWINGS_PER_CHARACTER:
            raise ValueError(
                f"shots + query_shots = {shots + query_shots} exceeds the {DRAWINGS_PER_CHARACTER} drawings per class"
            )
        return ways, shots, query_shots

    def sample(
        self,
        n: int,
        *,
        split: str = "train",
        seed: int | None = None,
        ways: int | None = None,
        shots: int | None = None,
        query_shots: int | None = None,
    ) -> EpisodeBatch:
        """Draw ``n`` tasks from ``split``; ``ways``/``shots``/``query_shots`` override the constructor's."""
        n = _positive_int("n", n)
        pool = self._pools[check_split(split, self.splits)]
        ways, shots, query_shots = self._check_shape(
            self.ways if ways is None else ways,
            self.shots if shots is None else shots,
            self.query_shots if query_shots is None else query_shots,
        )
        if ways > len(pool):
            raise ValueError(f"ways={ways} exceeds the {len(pool)} classes of the {split!r} split")
        rng = np.random.default_rng(seed) if seed is not None else self._rng
        per_class = shots + query_shots
        # uniform draws without replacement: the order of i.i.d. uniforms is a uniform random permutation
        classes = pool[np.argsort(rng.random((n, len(pool))), axis=1)[:, :ways]]  # [n, ways]
        if self.within_alphabet > 0:
            self._draw_within_alphabet(classes, split, rng)
        drawings = np.argsort(rng.random((n, ways, DRAWINGS_PER_CHARACTER)), axis=2)[:, :, :per_class]
        r = self.rotations_per_character
        base = torch.from_numpy(classes // r)
        images = self.characters.images[base[:, :, None], torch.from_numpy(drawings)]  # [n, ways, per_class, S, S]
        if r > 1:
            quarter_turns = torch.from_numpy(classes % r)
            for k in range(1, r):
                mask = quarter_turns == k
                if bool(mask.any()):
                    images[mask] = torch.rot90(images[mask], k, dims=(-2, -1))
        x = images.to(torch.float32).div_(255.0).unsqueeze(3)  # [n, ways, per_class, 1, S, S]
        if self.augment:
            x = random_affine(x.reshape(-1, 1, *x.shape[-2:]), rng, **self.augment_ranges).reshape(x.shape)
        size = x.shape[-2:]
        labels = torch.arange(ways, dtype=torch.int64)
        return EpisodeBatch(
            support_x=x[:, :, :shots].reshape(n, ways * shots, 1, *size),
            support_y=labels.repeat_interleave(shots).repeat(n, 1),
            query_x=x[:, :, shots:].reshape(n, ways * query_shots, 1, *size),
            query_y=labels.repeat_interleave(query_shots).repeat(n, 1),
            ways=ways,
            shots=shots,
        )

    def _draw_within_alphabet(self, classes: np.ndarray, split: str, rng: np.random.Generator) -> None:
        """Redraw each row of ``classes`` [n, ways] from one alphabet group with probability ``within_alphabet``."""
        n, ways = classes.shape
        groups = [g for g in self._groups[split] if len(g) >= ways]
        if not groups:
            raise ValueError(f"within_alphabet: no alphabet of the {split!r} split has {ways} classes "
                             f"(largest: {max(len(g) for g in self._groups[split])})")
        chosen = rng.random(n) < self.within_alphabet
        which = rng.integers(len(groups), size=n)
        for task in np.flatnonzero(chosen):
            group = groups[which[task]]
            classes[task] = group[np.argsort(rng.random(len(group)))[:ways]]

