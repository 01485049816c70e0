"""Where every result lives under ``results/``: the one place that spells the layout.

The Snakefile (rules/*.smk) builds its input and output patterns from these functions (called
with wildcard names such as ``"{chain}"`` they return the patterns), and the jobs that read
many results at once (the systems table) get their file lists from :func:`systems_spec`.

    results/data/, spectrograms/, folds.csv                 shared by every chain
    results/spectrograms/v{version}/train_copies.csv         waveform copies (when on)
    results/initial/{start}/train_list.csv                   what iteration 0 trains on
    results/initial/{start}/{preset}/fold{k}/                iteration-0 models, shared by the
                                                              chains with the same start
    results/chains/{chain}/models/{preset}/fold{k}/it{i}/    fine-tuned models (i >= 1)
    results/chains/{chain}/trust/{preset}/it{i}/             posteriors and decisions of the
                                                              iteration-i models; train_list.csv
                                                              is what iteration i+1 trains on
                                                              (pool chains: pool_*.csv beside)
    results/chains/{chain}/selection/{preset}.csv            model selection
    results/chains/{chain}/predictions/{preset}/             test and out-of-fold posteriors
    results/chains/{chain}/{submission,summary}.csv, evaluation/, plots/
    results/systems.csv, systems_iterations.csv, systems.png every chain side by side
    results/chosen/                                          the chain chain_choice: cv picked
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: Files of a model folder (one fold model of one iteration), by role: what a training job
#: writes there (``resume``: its checkpoint while it runs, removed when it ends).
MODEL_FILES = {"best": "best.pt", "last": "last.pt", "history": "history.csv", "resume": "resume.pt"}
#: Files of a trust (self-verification) folder, by role: what a self-verification job writes.
TRUST_FILES = {
    "posteriors": "posteriors.csv",
    "valid_posteriors": "valid_posteriors.csv",
    "decisions": "decisions.csv",
    "per_class": "per_class.csv",
    "train_list": "train_list.csv",
}
#: The "split" of the training clips' waveform copies (preprocessing.waveform_augmentation):
#: spectrograms/v{version}/train_copies.csv and its shards.
COPIES_SPLIT = "train_copies"

#: Files the unlabelled pool's judging job writes into the same trust folder (rule judge_pool;
#: only chains with ``pool: true``): the fold-mean posteriors, the policy's decisions, their
#: per-class counts and the pool clips iteration i+1 adds (workflow_lib/pool.py).
POOL_FILES = {
    "posteriors": "pool_posteriors.csv",
    "decisions": "pool_decisions.csv",
    "per_class": "pool_per_class.csv",
    "pool_list": "pool_list.csv",
}


@dataclass(frozen=True)
class Layout:
    """Paths under ``root``; ``starts`` maps each chain to its iteration-0 training set."""

    root: str = "results"
    starts: Mapping[str, str] = field(default_factory=dict)

    # shared inputs
    def demo_data(self, name: str = "") -> str:
        """The generated demo dataset (its root when ``name`` is empty)."""
        return f"{self.root}/demo_data/{name}".rstrip("/")

    def data(self, name: str) -> str:
        return f"{self.root}/data/{name}"

    @property
    def folds(self) -> str:
        return f"{self.root}/folds.csv"

    def spectrograms(self, version: object, split: str) -> str:
        return f"{self.root}/spectrograms/v{version}/{split}.csv"

    def spectrogram_shard(self, version: object, split: str, shard: object, ext: str) -> str:
        """One preprocessing job's array (npy) or manifest (csv)."""
        return f"{self.shard_stem(f'{self.root}/spectrograms', version, split, shard)}.{ext}"

    @staticmethod
    def shard_stem(spectrograms_dir: object, version: object, split: str, shard: object) -> str:
        """A shard's files without their ending, under ``spectrograms_dir`` (cli preprocess-shard
        is given that folder as --out-dir and writes ``<stem>.npy`` and ``<stem>.csv``)."""
        return f"{spectrograms_dir}/v{version}/{split}/shard{shard}"

    # iteration 0
    def initial_list(self, start: str) -> str:
        return f"{self.root}/initial/{start}/train_list.csv"

    def initial_dir(self, start: str, preset: str, fold: object) -> str:
        return f"{self.root}/initial/{start}/{preset}/fold{fold}"

    # a chain
    def chain_dir(self, chain: str) -> str:
        return f"{self.root}/chains/{chain}"

    def fine_tuned_dir(self, chain: str, preset: str, fold: object, iteration: object) -> str:
        return f"{self.chain_dir(chain)}/models/{preset}/fold{fold}/it{iteration}"

    def model_dir(self, chain: str, preset: str, fold: object, iteration: int) -> str:
        """A chain's model of iteration ``iteration`` (iteration 0: its start's shared one)."""
        if int(iteration) == 0:
            return self.initial_dir(self.starts[chain], preset, fold)
        return self.fine_tuned_dir(chain, preset, fold, iteration)

    @staticmethod
    def model_rule(model_file: object) -> str:
        """The rule that writes a ``best.pt`` (named in the error about a damaged one): the
        fine-tuned models live in ``it{i}/`` folders, the iteration-0 ones do not."""
        folder = str(model_file).replace("\\", "/").rsplit("/", 2)[-2]
        return "fine_tune" if folder.startswith("it") and folder[2:].isdigit() else "train_initial"

    def model_file(self, chain: str, preset: str, fold: object, iteration: int) -> str:
        return f"{self.model_dir(chain, preset, fold, iteration)}/{MODEL_FILES['best']}"

    def history_file(self, chain: str, preset: str, fold: object, iteration: int) -> str:
        return f"{self.model_dir(chain, preset, fold, iteration)}/{MODEL_FILES['history']}"

    def trust_dir(self, chain: str, preset: str, iteration: object) -> str:
        return f"{self.chain_dir(chain)}/trust/{preset}/it{iteration}"

    def trust_file(self, chain: str, preset: str, iteration: object, name: str) -> str:
        return f"{self.trust_dir(chain, preset, iteration)}/{name}"

    def train_list(self, chain: str, preset: str, iteration: int) -> str:
        """The list iteration ``iteration + 1`` of a chain trains on (-1: iteration 0's)."""
        if int(iteration) < 0:
            return self.initial_list(self.starts[chain])
        return self.trust_file(chain, preset, iteration, TRUST_FILES["train_list"])

    def valid_posteriors(self, chain: str, preset: str, iteration: object) -> str:
        """The out-of-fold posteriors of the verified clips by a chain's iteration-``iteration``
        fold models (what soft relabelling ``towards: confusion`` of iteration + 1 reads)."""
        return self.trust_file(chain, preset, iteration, TRUST_FILES["valid_posteriors"])

    def pool_list(self, chain: str, preset: str, iteration: int) -> str:
        """The unlabelled pool's clips iteration ``iteration + 1`` of a pool chain adds."""
        return self.trust_file(chain, preset, iteration, POOL_FILES["pool_list"])

    def selection(self, chain: str, preset: str) -> str:
        return f"{self.chain_dir(chain)}/selection/{preset}.csv"

    def predictions(self, chain: str, preset: str, kind: str = "test") -> str:
        """kind: test | valid_oof."""
        return f"{self.chain_dir(chain)}/predictions/{preset}/{kind}.csv"

    def fused(self, chain: str, name: str = "fused_test.csv") -> str:
        """fused_test.csv | fusion_weights.csv."""
        return f"{self.chain_dir(chain)}/predictions/{name}"

    def submission(self, chain: str) -> str:
        return f"{self.chain_dir(chain)}/submission.csv"

    def submission_status(self, chain: str) -> str:
        """Per test clip: predicted or why not (rule fuse)."""
        return f"{self.chain_dir(chain)}/submission_status.csv"

    def evaluation(self, chain: str, name: str) -> str:
        """summary.csv | per_class.csv | confusion.csv."""
        return f"{self.chain_dir(chain)}/evaluation/{name}"

    def summary(self, chain: str) -> str:
        return f"{self.chain_dir(chain)}/summary.csv"

    def plot(self, chain: str, name: str) -> str:
        return f"{self.chain_dir(chain)}/plots/{name}"

    # every chain
    def systems(self, name: str = "systems.csv") -> str:
        """systems.csv | systems_iterations.csv | systems.png."""
        return f"{self.root}/{name}"

    def chosen(self, name: str = "choice.csv") -> str:
        """choice.csv | chains.csv | summary.csv: the chain picked by chain_choice: cv."""
        return f"{self.root}/chosen/{name}"

    def log(self, name: str) -> str:
        return f"{self.root}/logs/{name}.log"

    def benchmark(self, name: str) -> str:
        return f"{self.root}/benchmarks/{name}.tsv"


def systems_spec(
    layout: Layout,
    chains: Sequence[str],
    presets: Sequence[str],
    iterations: Sequence[int],
    descriptions: Mapping[str, str],
    policies: Mapping[str, str],
    pool_chains: Collection[str] = (),
) -> list[dict]:
    """What the systems table reads, per chain and preset (rule systems); a chain of
    ``pool_chains`` also its judged pool's counts per iteration (``pool``)."""
    judged = list(iterations)[:-1]
    spec = []
    for c in chains:
        for p in presets:
            item = {
                "preset": p,
                "system": c,
                "description": descriptions.get(c, ""),
                "policy": policies[c],
                "selection": layout.selection(c, p),
                "test": layout.predictions(c, p),
                "self_verify": {str(i): layout.trust_file(c, p, i, TRUST_FILES["per_class"]) for i in judged},
            }
            if c in pool_chains:
                item["pool"] = {str(i): layout.trust_file(c, p, i, POOL_FILES["per_class"]) for i in judged}
            spec.append(item)
    return spec


def spec_files(spec: Sequence[Mapping]) -> list[str]:
    """Every file a systems spec names."""
    files: set[str] = set()
    for item in spec:
        files.update([item["selection"], item["test"], *item.get("self_verify", {}).values()])
        files.update(item.get("pool", {}).values())
    return sorted(files)


# --- how long a name may be ---------------------------------------------------------------

#: Bytes one file-name component may hold (NAME_MAX of ext4, XFS, APFS, NTFS ...).
NAME_MAX = 255
#: What an atomic write (workflow_lib.io.atomic_path) adds to a file's name for its temporary
#: file: "." + name + "." + 8 random characters + ".tmp".
TEMP_NAME_EXTRA = len(".") + len(".") + 8 + len(".tmp")
_WILDCARD = re.compile(r"\{\s*(\w+)\s*(?:,[^{}]*)?\}")


def _fill(component: str, values: Mapping[str, Sequence[str]], skip: str) -> str:
    """A pattern component with every wildcard but ``skip`` replaced by its longest value
    (unknown wildcards by nothing) and ``skip`` removed."""

    def longest(match: re.Match) -> str:
        name = match.group(1)
        if name == skip or name not in values or not values[name]:
            return ""
        return max((str(v) for v in values[name]), key=lambda v: len(v.encode()))

    return _WILDCARD.sub(longest, component)


def name_room(patterns: Iterable[str], values: Mapping[str, Sequence[str]]) -> dict[str, tuple[int, str]]:
    """{wildcard: (bytes its value may have, the pattern component that sets the bound)}.

    Each path pattern (rule outputs, logs, benchmarks: with wildcards such as ``{chain}``) is
    split into components; a component that holds a wildcard may hold NAME_MAX bytes, less
    its fixed text, the longest values of its other wildcards and, for the last component (a
    file), what a temporary name adds.
    """
    room: dict[str, tuple[int, str]] = {}
    for pattern in patterns:
        components = str(pattern).split("/")
        for depth, component in enumerate(components):
            extra = TEMP_NAME_EXTRA if depth == len(components) - 1 else 0
            for name in set(_WILDCARD.findall(component)):
                left = NAME_MAX - extra - len(_fill(component, values, name).encode())
                if name not in room or left < room[name][0]:
                    room[name] = (left, _WILDCARD.sub(r"{\1}", component))
    return room


def overlong_values(
    patterns: Iterable[str], values: Mapping[str, Sequence[str]], keys: Mapping[str, str]
) -> list[str]:
    """A sentence per value of a wildcard in ``keys`` (wildcard -> config key) that would not
    fit in a file name of the layout; checked at start, before any job."""
    problems = []
    for name, (left, component) in sorted(name_room(patterns, values).items()):
        for value in values.get(name, []) if name in keys else []:
            size = len(str(value).encode())
            if size > left:
                problems.append(
                    f"config key {keys[name]}: the name {str(value)[:40]!r}... is {size} bytes; file "
                    f"names hold at most {NAME_MAX} bytes and the layout's {component!r} leaves "
                    f"{left} for it: use a name of at most {left} bytes"
                )
    return problems
