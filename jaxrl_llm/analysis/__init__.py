"""Analysis tools around training: each module is a set of pure functions over arrays (and, where a
model is needed, over a decoder's teacher-forced outputs), importing down (models, objectives),
never from the trainers' loops."""
