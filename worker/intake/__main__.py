from worker.intake.serve import main

main()
