"""Built-in seed prompts for model-generated calibration data: science, code, history, math,
dialogue, stories, instructions, in several languages."""

SEED_PROMPTS: tuple[str, ...] = (
    # science
    "Explain how photosynthesis turns sunlight into chemical energy.",
    "Why is the sky blue during the day and red at sunset?",
    "Describe how vaccines train the immune system.",
    "What happens inside a star when it runs out of hydrogen?",
    "Explain plate tectonics and how it causes earthquakes.",
    # code
    "Write a Python function that checks whether a string is a palindrome, with tests.",
    "Explain the difference between a process and a thread, with an example in C.",
    "Write a SQL query that returns the ten customers with the highest total order value.",
    "Show how to read a CSV file in JavaScript and compute the average of one column.",
    "Review this code and suggest improvements: for i in range(len(xs)): print(xs[i])",
    # history and society
    "Summarize the causes and consequences of the French Revolution.",
    "How did the printing press change Europe in the fifteenth and sixteenth centuries?",
    "Describe daily life along the Silk Road around the year 1000.",
    "What were the main achievements of the Abbasid Caliphate?",
    # math
    "Prove that the square root of 2 is irrational.",
    "A train travels 180 km in 2.5 hours. What is its average speed? Show your steps.",
    "Explain what a derivative is, using the example f(x) = x^3 - 2x.",
    "How many ways can 5 books be arranged on a shelf if two of them must stay together?",
    "Explain Bayes' theorem with a medical test example.",
    # dialogue
    "Write a short dialogue between a customer and a barista who got the order wrong.",
    "Role-play a job interview for a junior data analyst position, asking three questions.",
    "Two friends disagree about whether to go hiking or to the museum. Write their conversation.",
    # stories and creative writing
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Write a poem about autumn rain in a big city.",
    "Continue the story: The door had been locked for a hundred years, until this morning.",
    "Describe a bustling market in a fantasy city, using all five senses.",
    # instructions and practical
    "Give step-by-step instructions for baking a simple loaf of bread.",
    "How should I prepare for a marathon in four months? Make a weekly plan.",
    "Write a polite email asking a landlord to fix a leaking kitchen tap.",
    "List the pros and cons of working from home, then give a balanced conclusion.",
    "Translate into plain English: 'The party of the first part shall indemnify the party of the second part.'",
    # other languages
    "Explique en français pourquoi les saisons existent sur Terre.",
    "Erkläre auf Deutsch, wie ein Elektromotor funktioniert.",
    "Escribe en español una receta tradicional de tortilla de patatas.",
    "Descreva em português a história da cidade do Rio de Janeiro.",
    "用中文介绍一下长城的历史和意义。",
    "日本の四季について短いエッセイを書いてください。",
    "한국의 전통 음식인 김치에 대해 설명해 주세요.",
    "Расскажи по-русски о том, как устроена Солнечная система.",
    "Spiega in italiano la differenza tra il caffè espresso e il cappuccino.",
    "اشرح باللغة العربية أهمية القراءة في حياة الإنسان.",
    "हिंदी में बताइए कि बारिश कैसे होती है।",
)
