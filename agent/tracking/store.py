"""MLflow itself: its client (`mlflow_client`), tracking URIs as RUN/mlflow.json keys them (`link_key`,
`stored_tracking_uri`, `tracked_store`, `linked_store`), a server's check, MLflow's errors as one
TrackingError line, and the look-ups `Mirror.open` makes. Its own module: the pipeline, the run
listing, the sweep and `mlflow-sync` use these without syncing anything.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.agent.llm.secrets import scrub_urls, without_secrets
from promptclimb.agent.runs.run import Run

FOLDER_TAG = "promptclimb.folder"  # where the run folder was when it was last logged
MLFLOW_FILE = "mlflow.json"  # in a run (or sweep) folder: {"v": 1, "runs": {uri: {experiment_id, run_id}}}
# While we talk to MLflow, unless the user set them: its HTTP client retries 7 times with
# doubling waits (minutes against a server that is gone; a search does not wait that long),
# and it prints run links to stdout (where `search --json` prints its summary).
MLFLOW_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


class TrackingError(PromptclimbError):
    """MLflow is missing, unreachable, or refused what was sent (one line)."""


# -- MLflow ---------------------------------------------------------------------------------
def mlflow_client(tracking_uri: str | None):
    """(MlflowClient, the tracking URI it uses): `tracking_uri`, else MLFLOW_TRACKING_URI, else
    MLflow's default. A server that does not answer is a TrackingError, at once."""
    try:
        import mlflow
    except ImportError:
        raise TrackingError("MLflow is not installed: pip install 'promptclimb[mlflow]'") from None
    uri = tracking_uri or mlflow.get_tracking_uri()
    check_server(uri)
    with mlflow_errors():  # a store MLflow refuses (its file store) is one line, not a traceback
        try:
            return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), uri
        except Exception as exc:
            if "MLFLOW_ALLOW_FILE_STORE" in str(exc):
                raise TrackingError(file_store_refused(uri)) from None
            raise


def file_store_refused(uri: str) -> str:
    """MLflow 3 refuses a folder (`./mlruns`, file:...) as a tracking store: say what works."""
    import mlflow

    return (f"MLflow {mlflow.__version__} does not track to a folder ({link_key(uri)}) unless "
            f"MLFLOW_ALLOW_FILE_STORE=true: use a database, e.g. {database_in_folder(uri)}")


def is_folder_store(uri: str) -> bool:
    """A tracking URI that names a folder (file:..., or a plain path), not a database or server."""
    return uri.startswith("file:") or (uri != "databricks" and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) is None)


def database_in_folder(uri: str) -> str:
    """A sqlite tracking URI in the folder `uri` names: what MLflow 3 tracks to instead."""
    folder = Path(uri.removeprefix("file://").removeprefix("file:")).expanduser()
    return f"sqlite:///{folder.resolve() / 'mlflow.db'}"


def artifacts_beside_database(uri: str, experiment: str) -> str | None:
    """The artifact location of a new experiment on a local sqlite store: a folder beside the
    database (DB_FOLDER/mlruns/<experiment>), as MLflow's default (sqlite:///mlflow.db with
    ./mlruns) has it when run from the database's folder; MLflow itself would use the
    ./mlruns of the current folder, wherever that is. None (MLflow decides): anything else."""
    if not uri.startswith("sqlite:///"):
        return None
    database = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not database or database == ":memory:":
        return None
    folder = re.sub(r"[^\w.-]+", "-", experiment).strip(".-") or "experiment"
    return (Path(database).expanduser().resolve().parent / "mlruns" / folder).as_uri()


def link_key(uri: str) -> str:
    """A tracking URI as RUN/mlflow.json knows it: no `user:password@`, no trailing "/", a
    sqlite database or a folder store by its absolute path."""
    uri = without_secrets(uri).rstrip("/")
    database, sep, query = uri.removeprefix("sqlite:///").partition("?")
    if uri.startswith("sqlite:///") and database and database != ":memory:":
        # sqlite:///mlflow.db (MLflow's default) names another database in every folder, and
        # the same one as sqlite:////ITS/PATH: keyed as typed, a sync from elsewhere (or by the
        # other spelling) found no link and logged every run a second time
        uri = f"sqlite:///{os.path.abspath(os.path.expanduser(database))}{sep}{query}"
    elif uri and is_folder_store(uri):  # ./mlruns, file:mlruns: another folder wherever the hint is run
        uri = absolute_folder_store(uri)
    return uri


def absolute_folder_store(uri: str) -> str:
    """A folder store (`is_folder_store`) by its absolute path, spelt as it was (a plain path,
    or file://PATH); file://HOST/... (another machine's) as typed."""
    if not uri.startswith("file:"):
        return os.path.abspath(os.path.expanduser(uri))
    path = uri.removeprefix("file:")
    if path.startswith("//") and not path.startswith("///"):
        return uri
    return "file://" + os.path.abspath(os.path.expanduser(path.removeprefix("//")))


def stored_tracking_uri(uri: str | None) -> str | None:
    """--mlflow as a sweep keeps it (sweep.json) and gives it to its cells: a local store
    (a sqlite database, a folder; bare, MLflow's default sqlite:///mlflow.db) by its absolute
    path, which a rerun or a report from another folder would read as another database
    (`link_key`); anything else (a server's http(s) URI, another database's) as typed, its
    password left for the sweep to leave out and ask for again. Bare stays bare where MLflow
    is not installed, or MLFLOW_TRACKING_URI names no local store (it gives it again then)."""
    if uri is None:
        return None
    if not uri:
        local = tracked_store(uri)
        return local if local and (local.startswith("sqlite:///") or is_folder_store(local)) else uri
    if (uri.startswith("sqlite:///") or is_folder_store(uri)) and without_secrets(uri) == uri:
        return link_key(uri)
    return uri


def tracked_store(tracking_uri: str) -> str | None:
    """The store a search given `--mlflow tracking_uri` ("": bare, MLflow's default) tracks
    to, as RUN/mlflow.json keys it (`link_key`, what its tracker's key is): absolute, without
    a password or key. The command that resumes the run names it: `--mlflow` as typed, bare
    or `sqlite:///mlflow.db`, is another database in another folder, and a resume from there
    logged a second MLflow run, the first left KILLED with half the run. None (a bare --mlflow
    stays bare) where MLflow is not installed, or MLFLOW_TRACKING_URI holds a password or key:
    named without it, the store would refuse the resume; bare, the variable gives it again."""
    if not tracking_uri:
        try:
            import mlflow
        except ImportError:
            return None
        tracking_uri = mlflow.get_tracking_uri()  # MLFLOW_TRACKING_URI, else MLflow's default
        if without_secrets(tracking_uri) != tracking_uri:
            return None
    return link_key(tracking_uri)


def linked_store(folder: str | Path) -> str | None:
    """The one tracking store RUN/mlflow.json links the folder to (its key: absolute, without a
    password), or None (none, or several: which one a resume should continue is the user's)."""
    links = _read_links(Path(folder))
    return next(iter(links)) if len(links) == 1 else None


def check_server(uri: str, timeout_s: float = 5.0) -> None:
    """An http(s) tracking server answers (any HTTP answer will do), or TrackingError."""
    if not uri.startswith(("http://", "https://")):
        return
    shown = without_secrets(uri)
    try:
        urllib.request.urlopen(shown.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TrackingError(f"cannot reach the MLflow tracking server at {shown} ({reason})") from None


@contextmanager
def mlflow_errors() -> Iterator[None]:
    """MLflow's (and its HTTP client's) errors as a one-line TrackingError; meanwhile MLflow
    is quiet (warnings only, no links on stdout) and its HTTP retries short (MLFLOW_ENV)."""
    added = {k: v for k, v in MLFLOW_ENV.items() if k not in os.environ}
    os.environ.update(added)
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    except PromptclimbError:
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException, requests' errors, OSError
        raise TrackingError(f"MLflow: {_one_line(exc)}") from exc
    finally:
        logger.setLevel(level)
        for key in added:
            os.environ.pop(key, None)


def _experiment_id(client, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id; a new experiment gets `artifact_location` (None: MLflow's choice)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except Exception:  # noqa: BLE001 - another process (a sweep's cell) created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def refresh_report(run: Run) -> None:
    """report.html written again where the run changed since `promptclimb report` wrote it
    (a search went on, an adapter was fitted): it was logged as the run's report as it was
    then ("unfinished", 5 answers, no test accuracy) beside a finished run."""
    from promptclimb.agent.core.runfiles import HISTORY, REPORT, SUMMARY
    from promptclimb.agent.runs.report import write_report

    page = run.path / REPORT
    if not page.is_file():
        return
    newest = max((f.stat().st_mtime for f in (run.path / HISTORY, run.path / SUMMARY) if f.is_file()), default=0.0)
    if newest > page.stat().st_mtime:
        write_report(run)


def _copied(held, folder: Path) -> bool:
    """Whether `folder` is a copy of the run folder logged to MLflow run `held` (its
    mlflow.json came along): that folder is still there, linked to the same run. A copy then
    gets an MLflow run of its own; it took the original's over (its folder tag, its files).
    A folder moved since continues its run."""
    logged = held.data.tags.get(FOLDER_TAG)
    if not logged or Path(logged) == folder.resolve() or not Path(logged).is_dir():
        return False
    return any(isinstance(link, dict) and link.get("run_id") == held.info.run_id
               for link in _read_links(Path(logged)).values())


def _live_run(client, run_id: str):
    """MLflow's run `run_id`, or None where it is gone (deleted, or never on this server)."""
    from mlflow.exceptions import MlflowException

    try:
        held = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return None if held.info.lifecycle_stage == "deleted" else held


@contextmanager
def registering_prompts(uri: str, experiment_id: str) -> Iterator[None]:
    """Meanwhile, MLflow's global tracking URI is `uri` and its experiment `experiment_id`, as
    they were afterwards. `register_prompt` links the prompt to the global experiment (MLflow's
    Default, else) in a thread it starts and does not wait for; on a folder store, that thread
    and the registry read a prompt version through a client of the global URI, not their own
    (a TODO in mlflow/store/model_registry/file_store.py), which created an `mlflow.db` of
    MLflow's default in the current folder. So those threads started meanwhile are waited for
    (by their name: any other thread, such as a worker that lives on, is not)."""
    import mlflow
    from mlflow.tracking import is_tracking_uri_set

    previous = mlflow.get_tracking_uri() if is_tracking_uri_set() else None
    experiment = os.environ.get("MLFLOW_EXPERIMENT_ID")
    running = set(threading.enumerate())
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    try:
        yield
    finally:
        for thread in set(threading.enumerate()) - running:
            if thread.name.startswith("link_prompt_to_experiment"):
                thread.join(timeout=30)
        mlflow.set_tracking_uri(previous)
        if experiment is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = experiment


def _registered_template(client, uri: str) -> str | None:
    name, _, version = uri.removeprefix("prompts:/").rpartition("/")
    found = client.get_prompt_version(name, version) if name else None
    return found.template if found else None


# -- small helpers --------------------------------------------------------------------------
def _read_links(folder: Path) -> dict:
    """RUN/mlflow.json's runs by tracking URI ({} when absent or unreadable: a new MLflow run)."""
    try:
        runs = json.loads((folder / MLFLOW_FILE).read_text(encoding="utf-8")).get("runs")
    except (OSError, ValueError, AttributeError):
        return {}
    return runs if isinstance(runs, dict) else {}


def _one_line(exc: BaseException) -> str:
    """The first line of an error, without the password or the secret query values of any URL
    in it (MLflow quotes the tracking URI, `?access_token=...` and all)."""
    lines = str(exc).strip().splitlines()
    return scrub_urls(lines[0]) if lines else type(exc).__name__
