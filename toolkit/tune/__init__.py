"""`dlkit tune`: choose the served configuration by measuring the real server under load.

space.py     what is searched: a variant and its Triton serving options, axis by axis
search.py    the decisions (goal, verdicts, coordinate descent), pure functions of the numbers
trials.py    a trial: its config, status, and each level's figures
inputs.py    what is tuned (artifacts, a deploy run, a model in a repository), staged privately
session.py   one tritonserver for the run; loading and measuring one trial on it
breakdown.py where one request's time goes at concurrency 1
verify.py    the chosen config's accuracy through the endpoint
publish.py   the chosen config written into the repository as a new version
report.py    tune.json, tune.md, tune.png
run.py       `tune(TuneConfig)`: all of the above in order
"""
