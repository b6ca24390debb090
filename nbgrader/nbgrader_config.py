# nbgrader course directory for qedu's exercises (run nbgrader commands from this folder).
# source/NN_slug/NN_slug.ipynb are generated from exercise_sources/ by `make exercises`;
# release/, submitted/, autograded/, feedback/ and gradebook.db are the course's working files
# (git-ignored). See README.md, "For teachers".
c = get_config()  # noqa: F821 (nbgrader defines it)

c.CourseDirectory.course_id = "qedu"
# The stub nbgrader puts in place of each solution: the same line as in exercises/ (the checks
# recognise it and print "not implemented yet"; the autograder cell then scores 0).
c.ClearSolutions.code_stub = {"python": 'raise NotImplementedError("Replace this line with your code.")'}
# Seconds per cell when autograding; the slowest check takes a few seconds on a laptop CPU.
c.Execute.timeout = 300
