"""Where jobs run: the worker process, the supervisor that keeps workers alive, and the executors
(local, Ray) with the mirror that carries a job's folder to a Ray task. Nothing here imports the page
or the request facade."""
