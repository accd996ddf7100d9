"""The README's TPU/GPU section and docs/cloud.md hold commands a user pastes on a cloud machine,
where nothing else checks them: they must name the Python they need (≥ 3.11, in a venv), run
the project's tools with that venv's Python on every host, and use only flags the tools define."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = '~/svj/bin/python'


def _read(path):
    with open(os.path.join(REPO, path)) as f:
        return f.read()


def _section(text, heading):
    start = text.index(heading)
    end = text.find('\n## ', start + len(heading))
    return text[start : end if end != -1 else None]


def _commands(text):
    """Each invocation of a tools/*.py script: (the word before it, the script, its flags),
    shell continuation lines joined."""
    text = text.replace('\\\n', ' ')
    found = []
    for match in re.finditer(r'(\S+)\s+tools/(\w+)\.py([^\n`"]*)', text):
        flags = re.findall(r'(?<!\S)--([a-z_]+)', match.group(3))
        found.append((match.group(1).lstrip('`"'), match.group(2), flags))
    return found


def _defined_flags(tool):
    source = _read(f'tools/{tool}.py')
    names = set(re.findall(r"DEFINE_\w+\(\s*'(\w+)'", source))
    names |= set(re.findall(r"config_flags\.DEFINE_config_file\(\s*'(\w+)'", source))
    return names


def test_readme_and_cloud_doc_state_python_311_in_a_venv():
    readme = _section(_read('README.md'), '## Running on TPU and GPU')
    cloud = _read('docs/cloud.md')
    for text in (readme, cloud):
        assert 'Python ≥ 3.11' in text
        assert 'python3.11 -m venv ~/svj' in text


def test_cloud_commands_run_in_the_venv_with_flags_the_tools_define():
    readme = _section(_read('README.md'), '## Running on TPU and GPU')
    cloud = _read('docs/cloud.md')
    on_cloud = cloud[: cloud.index('## 6.')]  # §6 runs in the clone's own .venv
    commands = _commands(readme) + _commands(on_cloud)
    assert any(tool == 'train' and 'jax_distributed' in flags for _, tool, flags in commands)
    for python, tool, flags in _commands(readme) + _commands(on_cloud):
        if tool != 'gcs_emulator':  # a local stand-in for a bucket, not a cloud command
            assert python == VENV_PYTHON, (python, tool)
    for _, tool, flags in _commands(readme) + _commands(cloud):
        defined = _defined_flags(tool) | {'helpfull'}
        unknown = [f for f in flags if f not in defined and not f.startswith('config')]
        assert not unknown, (tool, unknown)
