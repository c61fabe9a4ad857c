from p2pgrid.cli import main

main()
