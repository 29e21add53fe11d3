"""The `normalcy` command line: the one package that sees every other.

    cli.py                  main(): the parser, and errors turned into exit codes
    training_commands.py    train, report, demo            (imports training: needs PyTorch)
    bundle_commands.py      info, evaluate, calibrate      (imports detectors)
    jobs_commands.py        score                          (imports jobs)
    service_commands.py     serve                          (imports service)
    arguments.py            argument types the subcommands share

The import rule: everything imports `detectors`; `training`, `service` and `jobs` never import
each other; only this package imports them all, each when its command runs, so `normalcy serve`
and `normalcy score` work in an install without PyTorch.
"""
