from glob import glob

from setuptools import find_packages, setup

PACKAGE_NAME = 'clipseg_ros'
MINI_MODEL = 'clipseg_shapes_mini'

setup(
    name=PACKAGE_NAME,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE_NAME]),
        ('share/' + PACKAGE_NAME, ['package.xml']),
        ('share/' + PACKAGE_NAME + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE_NAME + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        # The miniature model trained on synthetic tabletop scenes (tests and demos).
        ('share/' + PACKAGE_NAME + '/models/' + MINI_MODEL,
         sorted(glob('models/' + MINI_MODEL + '/*'))),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='clipseg_ros maintainers',
    maintainer_email='maintainers@clipseg-ros.dev',
    description='Open-vocabulary segmentation for ROS 2 with CLIPSeg.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'clipseg_node = clipseg_ros.main:main',
        ],
    },
)
