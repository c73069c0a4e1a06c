from qtool.cli.app import run

run()
