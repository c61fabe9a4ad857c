from p2pgrid.agent.process import main

main()
