from p2pgrid.utility.process import main

main()
