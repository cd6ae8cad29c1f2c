from dataplane.cli.main import main

main()
