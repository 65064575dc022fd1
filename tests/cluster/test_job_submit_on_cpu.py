"""Every job runs through `ray job submit --working-dir .` on a real `ray start --head` cluster,
with the upload excludes of cluster/runtime_env.yaml."""
import subprocess
import time

import pytest

from cluster_head import BIN, REPO, ray_head

JOBS = sorted(p.name for p in (REPO / "jobs").glob("*.py"))


@pytest.fixture(scope="module")
def head():
    with ray_head() as cluster:
        address, env = cluster.dashboard, cluster.env
        # The job agent comes up a little after `ray start` returns ("No available agent").
        for _ in range(30):
            if _submit(address, env, "python", "-c", "pass", timeout=120).returncode == 0:
                break
            time.sleep(2)
        else:
            pytest.fail(f"the job server of the head at {address} never accepted a job; see "
                        f"{cluster.temp_dir}/session_latest/logs/dashboard_agent.log")
        yield address, env


def _submit(address, env, *entrypoint, timeout=600):
    command = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir",
               str(REPO), "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"), "--",
               *entrypoint]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def test_upload_excludes_data_runs_and_git(head):
    address, env = head
    result = _submit(address, env, "python", "-c",
                     "import os; print('LISTING', sorted(os.listdir('.')))")
    assert result.returncode == 0, result.stderr[-2000:]
    listing = next(line for line in result.stdout.splitlines() if line.startswith("LISTING"))
    assert "'jobs'" in listing and "'afmrl'" in listing
    for excluded in (".git", ".venv", "runs"):
        assert f"'{excluded}'" not in listing


def test_every_job_parses_its_config_when_submitted(head, tmp_path):
    """One submission runs each job's config parsing (imports, dotted overrides) on the cluster."""
    address, env = head
    script = " && ".join(f"python jobs/{job} --print-config run_dir={tmp_path}/{job}"
                         for job in JOBS)
    result = _submit(address, env, "bash", "-c", script)
    assert result.returncode == 0, result.stderr[-2000:]
    for job in JOBS:
        assert f"run_dir: {tmp_path}/{job}" in result.stdout


DOC_MARKER = "<!-- ray-job-submit: run verbatim by tests/cluster/test_job_submit_on_cpu.py -->"


def documented_command() -> str:
    """The fenced block after the marker in docs/cluster.md (README shows the same one)."""
    text = (REPO / "docs" / "cluster.md").read_text()
    assert DOC_MARKER in text, "docs/cluster.md lost the tested `ray job submit` block"
    block = text.split(DOC_MARKER, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    assert block in (REPO / "README.md").read_text(), (
        "README.md must show the same `ray job submit` command as docs/cluster.md")
    return block


def test_the_documented_submit_distils_and_labels_from_the_shared_data(head, tmp_path,
                                                                       shared_data):
    """The docs' command verbatim: teacher labels -> SFT (a Ray Train worker) -> extraction,
    reading the catalogs from data.root on the cluster (not from the uploaded folder)."""
    import pandas as pd

    address, env = head
    env = {**env, "RAY_ADDRESS": address, "AFMRL_DATA": str(shared_data),
           "AFMRL_RUNS": str(tmp_path)}
    result = subprocess.run(["bash", "-euc", documented_command()], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "attributes: 31 rows" in result.stdout
    run = tmp_path / "mini"
    teacher = pd.read_parquet(run / "extract" / "teacher" / "teacher.parquet")
    assert len(teacher) > 0 and set(teacher.columns) == {"item_id", "attributes"}
    assert (run / "models" / "generator-sft" / "config.json").is_file()
    assert (run / "extract" / "sft" / "catalog" / "attributes.parquet").is_file()
