"""The documentation site (``mkdocs.yml``, ``docs/``) builds, and its code runs.

Every code block of the Python API page and of the extension guides is included from a file in
``docs/examples/`` (``--8<--`` snippets), and those files are imported and run here on tiny
federations, registered the way the guides say: the dataset, partition and model through their
registries' ``register`` functions, the compressor and the privacy mechanism through theirs, the
algorithm in a simulator built by hand (``docs/examples/use_extensions.py``). The numerical
checks of the older examples (FedExP against the paper's loop, TernGrad's variance, dp_full's
noise and epsilon) are in ``tests/test_examples.py`` and ``tests/test_compressor_registry.py``.
``mkdocs build --strict`` (the site, with the API reference from the docstrings) must succeed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedbench.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
EXAMPLES = DOCS / "examples"
#: The smallest useful run: logistic regression, two evaluations, no checkpoints.
TINY = ("model=logreg", "rounds=2", "eval_every=1", "checkpoint_every=0")


def _example(name):
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def registries():
    """Every run-time registry as it was before the test (a test registers examples)."""
    from fedbench import dataset, model, partition
    from fedbench.compression import registry as compressors
    from fedbench.privacy.mechanism import registry as mechanisms

    saved = [(d, dict(d)) for d in (dataset.DATASETS, partition.REGISTERED, model.REGISTERED,
                                    mechanisms())]
    runtime = set(compressors.RUNTIME_DEFAULTS)
    yield
    for name in set(compressors.RUNTIME_DEFAULTS) - runtime:
        compressors.unregister(name)
    for registry, before in saved:
        registry.clear()
        registry.update(before)


def test_python_api_runs_a_sweep_and_reads_it_back(tmp_path):
    api = _example("python_api")
    overrides = (*TINY, "dataset=breast_cancer", "num_clients=4", "clients_per_round=4")
    table, means = api.sweep(tmp_path / "sweep", "lr", [0.05, 0.1], overrides)
    assert set(table["status"]) == {"completed"} and set(table["lr"]) == {0.05, 0.1}
    assert len(table) == 2 * 3  # two runs, evaluations at rounds 0, 1, 2
    assert list(means.index) == [0.05, 0.1] and list(means["runs"]) == [1, 1]
    metrics, summary = api.read_run(tmp_path / "sweep" / "lr=0.1")
    assert [m["round"] for m in metrics] == [0, 1, 2]
    assert summary["status"] == "completed" and summary["config"]["lr"] == 0.1
    assert summary["final"]["test_accuracy"] == metrics[-1]["test_accuracy"]
    assert api.config(["rounds=7"])["rounds"] == 7
    final = api.step_by_step(overrides, rounds=2)
    assert final["round"] == 2 and 0.0 <= final["test_accuracy"] <= 1.0


def test_dataset_guide_registers_a_csv_loader_and_trains_on_its_hospitals(tmp_path, registries):
    example = _example("dataset")
    csv = example.write_demo_csv(tmp_path / "patients.csv")
    raw = example.load_patients_csv({**example.DEFAULTS, "path": str(csv)})
    assert raw.x.shape == (569, 8) and np.isnan(raw.x).any() and raw.num_classes == 2
    assert raw.client_names == ["east", "north", "south", "west"]
    summary = example.train(csv, tmp_path / "run", TINY)  # registers dataset.name=patients_csv
    assert summary["status"] == "completed"
    stats = summary["partition_stats"]
    assert stats["client_names"] == raw.client_names  # the hospitals are the clients
    assert sum(stats["client_sizes"]) + sum(stats["test_sizes"]) == 569
    assert summary["final"]["test_accuracy"] > 0.6
    with pytest.raises(ValueError, match="exists already"):
        example.register()
    with pytest.raises(ConfigError) as error:
        example.load_patients_csv({**example.DEFAULTS, "path": str(csv), "label": "diagnosis"})
    assert error.value.key == "dataset.label"


def test_partition_guide_gives_every_client_k_labels(tmp_path, registries):
    from sklearn.datasets import load_digits

    example = _example("partition")
    labels = load_digits().target
    for k in (1, 2, 5):
        parts = example.label_quantity(labels, 12, np.random.default_rng(k),
                                       {"labels_per_client": k})
        assert [len(set(labels[p])) for p in parts] == [k] * 12
        joined = np.concatenate(parts)  # 12 >= 10 clients: every label is held, so every example
        assert np.array_equal(np.sort(joined), np.arange(len(labels)))
    with pytest.raises(ConfigError) as error:
        example.label_quantity(labels, 12, np.random.default_rng(0), {"labels_per_client": 11})
    assert error.value.key == "partition.labels_per_client"
    summary = example.train(tmp_path / "run", TINY, labels_per_client=2)
    assert summary["status"] == "completed"
    histograms = np.asarray(summary["partition_stats"]["label_histograms"])
    assert ((histograms > 0).sum(axis=1) <= 2).all()  # training splits: at most the 2 labels


def test_model_guide_registers_a_residual_mlp_and_trains_it(tmp_path, registries):
    import jax

    example = _example("model")
    net = example.build_resmlp({"name": "resmlp", "width": 8, "blocks": 3}, (30,), 2,
                               "classification")
    params = net.init(jax.random.PRNGKey(0), np.zeros((5, 30), np.float32))["params"]
    assert net.apply({"params": params}, np.zeros((5, 30), np.float32)).shape == (5, 2)
    with pytest.raises(ConfigError) as error:
        example.build_resmlp({"width": 0}, (30,), 2, "classification")
    assert error.value.key == "model.width"
    summary = example.train(tmp_path / "run", TINY[1:], width=16, blocks=1)  # not TINY's model
    assert summary["status"] == "completed" and summary["config"]["model"]["name"] == "resmlp"
    assert summary["final"]["test_accuracy"] > 0.8


def test_algorithm_guide_runs_fedexp_in_a_simulator(registries):
    final = _example("use_extensions").train_fedexp(rounds=2)
    assert final["round"] == 2 and final["test_accuracy"] > 0.8


def test_compressor_guide_runs_terngrad_through_run_experiment(tmp_path, registries):
    summary = _example("use_extensions").train_terngrad(
        tmp_path / "run", [*TINY, "dataset=breast_cancer", "num_clients=4", "clients_per_round=4"])
    assert summary["status"] == "completed"
    assert summary["config"]["compression"]["name"] == "terngrad"
    assert summary["final"]["compression_ratio"] > 8  # 2 bits a value instead of 32, + scales


def test_privacy_mechanism_guide_runs_dp_full_through_run_experiment(tmp_path, registries):
    summary = _example("use_extensions").train_dp_full(
        tmp_path / "run", [*TINY, "dataset=breast_cancer", "num_clients=4"])
    assert summary["status"] == "completed"
    assert summary["privacy"]["epsilon"] == pytest.approx(summary["final"]["epsilon"])
    assert 0 < summary["final"]["epsilon"] < 20


def test_every_guide_shows_code_from_a_file_the_tests_run():
    """Each page of the Python API and the extension guides includes its code from
    ``docs/examples/``, and a test imports each file it includes."""
    tests = "\n".join(p.read_text() for p in (REPO / "tests").glob("test_*.py"))
    pages = [DOCS / "python-api.md", *sorted((DOCS / "extending").glob("*.md"))]
    assert len(pages) == 1 + 7  # the index and six guides
    for page in pages:
        included = re.findall(r'--8<-- "docs/examples/(\w+)\.py(?::\w+)?"', page.read_text())
        if page.name == "index.md":
            continue
        assert included, f"{page.name} includes no example file"
        for name in included:
            assert (EXAMPLES / f"{name}.py").is_file(), f"{page.name}: {name}.py is missing"
            assert re.search(rf'_example\("{name}"\)|load_example\("{name}"\)', tests), (
                f"no test imports docs/examples/{name}.py ({page.name})")


def test_readme_links_point_at_files():
    """The README links into the site's pages by relative path: each must exist."""
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert local, "the README links to no page of the documentation"
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_audits_page_includes_the_readme_section_as_it_stands():
    """docs/hooks.py: the README's "Privacy audits" section, every line of it, headings raised;
    relative links become code spans; a section the README lacks stops the build."""
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    readme = (REPO / "README.md").read_text()
    section = hooks.readme_section(readme, "Privacy audits")
    assert section.strip() and all(line in readme for line in section.splitlines())
    assert "<!-- readme-section: Privacy audits -->" in (DOCS / "audits.md").read_text()
    text = ("## A\n\n[x](results/a.md), [y](https://e.org)\n### Sub\n```\n## in code\n```\n"
            "## B\nno\n")
    assert hooks.readme_section(text, "A") == (
        "x (`results/a.md`), [y](https://e.org)\n## Sub\n```\n## in code\n```\n")
    with pytest.raises(Exception, match="no section"):
        hooks.readme_section(readme, "Not a section")


def test_mkdocs_build_strict(tmp_path):
    missing = [name for name, module in (("mkdocs", "mkdocs"), ("mkdocs-material", "material"),
                                         ("mkdocstrings-python", "mkdocstrings_handlers"))
               if importlib.util.find_spec(module) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[docs]' (the test "
                    "extra has them)")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice about MkDocs 2.0
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert (site / "index.html").is_file()
    reference = (site / "reference" / "run" / "index.html").read_text()
    assert "run_experiment" in reference and "metrics.jsonl" in reference  # from the docstring
    guide = (site / "extending" / "dataset" / "index.html").read_text()
    assert "load_patients_csv" in guide  # the example file, included
