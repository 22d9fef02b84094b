from hubprune.cli import main

main()
