from busgate.runners.rpc import count_step


def test_count_walks_in_batches_until_to():
    steps, previous = [], None
    while True:
        step = count_step({"to": 5, "batch": 2, "wait": 200, "previous": previous})
        steps.append(step)
        if not step["continue"]:
            break
        previous = step["next"]
    assert [s["list"] for s in steps] == [[1, 2], [3, 4], [5]]
    assert [s["next"] for s in steps] == [2, 4, 5]
    assert all(s["wait"] == 200 for s in steps)


def test_count_resumes_after_previous_given_as_text():
    assert count_step({"from": 1, "to": 10, "previous": "7"})["list"] == [8]


def test_count_defaults():
    assert count_step({}) == {"list": [1], "continue": True, "wait": 1000, "next": 1}
